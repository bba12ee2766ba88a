package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/jpeg"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// UploadConfig configures RunUpload. Zero values take the documented
// defaults.
type UploadConfig struct {
	// URL is the gateway's base URL, e.g. http://127.0.0.1:8000. Required.
	URL string
	// APIKey is sent as "Authorization: Bearer <key>" when not empty.
	APIKey string
	// Width and Height are the pixel size of the synthetic JPEG; default
	// 4000×3000 (12 MP).
	Width, Height int
	// Quality is its JPEG quality; default 90.
	Quality int
	// Photos is how many uploads to make; default 50.
	Photos int
	// Concurrency is how many uploads are in flight at once; default 2.
	Concurrency int
	// Delete deletes every uploaded photo after the measurement.
	Delete bool
	// Seed seeds the synthetic photo.
	Seed uint64
	// HTTPClient sends the requests; default a client with a 5-minute
	// timeout.
	HTTPClient *http.Client
	// Out receives progress and the results; default os.Stdout.
	Out io.Writer
}

func (c *UploadConfig) withDefaults() error {
	if c.URL == "" {
		return errors.New("bench: upload: URL is required")
	}
	c.URL = strings.TrimRight(c.URL, "/")
	if c.Width <= 0 {
		c.Width = 4000
	}
	if c.Height <= 0 {
		c.Height = 3000
	}
	if c.Quality <= 0 {
		c.Quality = 90
	}
	if c.Photos <= 0 {
		c.Photos = 50
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 2
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 5 * time.Minute}
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
	return nil
}

// UploadResult is what RunUpload measured.
type UploadResult struct {
	// Uploads is the number of uploads answered 201; Errors the others.
	Uploads, Errors int
	// PhotoBytes is the size of the uploaded JPEG.
	PhotoBytes int
	// Elapsed is the wall time of the measurement.
	Elapsed time.Duration
	// UploadsPerSec and MBPerSec (uploaded bytes, 10^6) are the rates of
	// successful uploads.
	UploadsPerSec, MBPerSec float64
	// P50 and P99 are latency percentiles of the successful uploads.
	P50, P99 time.Duration
}

// RunUpload uploads a synthetic JPEG cfg.Photos times through the gateway
// at cfg.URL, cfg.Concurrency at a time, and prints and returns the rates.
func RunUpload(ctx context.Context, cfg UploadConfig) (UploadResult, error) {
	if err := cfg.withDefaults(); err != nil {
		return UploadResult{}, err
	}
	photo, err := SyntheticJPEG(cfg.Width, cfg.Height, cfg.Quality, cfg.Seed)
	if err != nil {
		return UploadResult{}, err
	}
	fmt.Fprintf(cfg.Out, "uploading a %dx%d JPEG (%.2f MB) %d times, %d at a time, to %s\n",
		cfg.Width, cfg.Height, float64(len(photo))/1e6, cfg.Photos, cfg.Concurrency, cfg.URL)

	var (
		next     atomic.Int64
		mu       sync.Mutex
		lat      []time.Duration
		ids      []string
		firstErr error
		errCount int
		wg       sync.WaitGroup
	)
	start := time.Now()
	for range cfg.Concurrency {
		wg.Go(func() {
			for next.Add(1) <= int64(cfg.Photos) && ctx.Err() == nil {
				t0 := time.Now()
				id, err := uploadOnce(ctx, &cfg, photo)
				d := time.Since(t0)
				mu.Lock()
				if err != nil {
					errCount++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					lat = append(lat, d)
					ids = append(ids, id)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)

	res := UploadResult{Uploads: len(lat), Errors: errCount, PhotoBytes: len(photo), Elapsed: elapsed}
	if len(lat) > 0 {
		slices.Sort(lat)
		res.UploadsPerSec = float64(len(lat)) / elapsed.Seconds()
		res.MBPerSec = res.UploadsPerSec * float64(len(photo)) / 1e6
		res.P50 = lat[len(lat)/2]
		res.P99 = lat[min(len(lat)-1, int(math.Ceil(0.99*float64(len(lat))))-1)]
	}
	fmt.Fprintf(cfg.Out, "%d uploads in %v: %.2f uploads/s, %.1f MB/s, p50 %v, p99 %v, errors %d\n",
		res.Uploads, elapsed.Round(time.Millisecond), res.UploadsPerSec, res.MBPerSec,
		res.P50.Round(time.Millisecond), res.P99.Round(time.Millisecond), res.Errors)
	if firstErr != nil {
		fmt.Fprintf(cfg.Out, "first error: %v\n", firstErr)
	}
	if cfg.Delete {
		for _, id := range ids {
			if err := deleteOnce(ctx, &cfg, id); err != nil {
				fmt.Fprintf(cfg.Out, "delete %s: %v\n", id, err)
			}
		}
	}
	if res.Uploads == 0 && firstErr != nil {
		return res, fmt.Errorf("bench: every upload failed: %w", firstErr)
	}
	return res, ctx.Err()
}

func uploadOnce(ctx context.Context, cfg *UploadConfig, photo []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.URL+"/photos", bytes.NewReader(photo))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "image/jpeg")
	if cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+cfg.APIKey)
	}
	resp, err := cfg.HTTPClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	var v struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &v); err != nil || v.ID == "" {
		return "", fmt.Errorf("answer without a photo ID: %s", bytes.TrimSpace(body))
	}
	return v.ID, nil
}

func deleteOnce(ctx context.Context, cfg *UploadConfig, id string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, cfg.URL+"/photos/"+id, nil)
	if err != nil {
		return err
	}
	if cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+cfg.APIKey)
	}
	resp, err := cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// SyntheticJPEG encodes a photo-like w×h JPEG: smooth colour gradients and
// waves with fine noise, so it compresses (and decodes) about as a camera
// photo of that size does.
func SyntheticJPEG(w, h, quality int, seed uint64) ([]byte, error) {
	if w <= 0 || h <= 0 {
		return nil, fmt.Errorf("bench: synthetic photo size %dx%d", w, h)
	}
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	m := image.NewYCbCr(image.Rect(0, 0, w, h), image.YCbCrSubsampleRatio420)
	fx, fy := 6*math.Pi/float64(w), 4*math.Pi/float64(h)
	for y := range h {
		row := m.Y[y*m.YStride:]
		for x := range w {
			v := 128 + 60*math.Sin(float64(x)*fx+2*math.Sin(float64(y)*fy)) + 30*math.Cos(float64(y)*fy*1.7) + float64(rng.IntN(25)) - 12
			row[x] = uint8(max(0, min(255, v)))
		}
	}
	for y := range (h + 1) / 2 {
		for x := range (w + 1) / 2 {
			i := y*m.CStride + x
			m.Cb[i] = uint8(128 + 50*math.Sin(float64(x)*fx*2) + float64(rng.IntN(7)) - 3)
			m.Cr[i] = uint8(128 + 50*math.Cos(float64(y)*fy*2) + float64(rng.IntN(7)) - 3)
		}
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, m, &jpeg.Options{Quality: quality}); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
