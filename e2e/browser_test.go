package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromiumOptions start Chromium headless on a closed network, as root:
// chromedp's defaults (headless, no first run, no background networking,
// sync or extensions) plus no sandbox, no GPU, no component updates or QUIC,
// and a fresh profile. Without the background-networking flags Chromium
// keeps trying, and failing, to reach Google's services.
func chromiumOptions(path, profile string) []chromedp.ExecAllocatorOption {
	return append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]),
		chromedp.ExecPath(path),
		chromedp.UserDataDir(profile),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.WindowSize(1280, 1400),
	)
}

// pageImage is what the page reports of one size's <img>.
type pageImage struct {
	Src      string `json:"src"`
	Complete bool   `json:"complete"`
	Width    int    `json:"naturalWidth"`
	Height   int    `json:"naturalHeight"`
}

func TestBrowser(t *testing.T) {
	chromium, err := lookPath("chromium", "/usr/bin/chromium", "chromium-browser")
	if err != nil {
		t.Skip("chromium is not installed (apt-get install chromium): ", err)
	}
	photos := corpus(t, 3)
	pick := photos[len(photos)/2] // a mid-sized photo
	front, _ := startServer(t, "")

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), chromiumOptions(chromium, t.TempDir())...)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()
	// The first action starts the browser, under a context without a
	// deadline (a deadline there would end the browser); later ones get one.
	if err := chromedp.Do(browser, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start %s: %v", chromium, err)
	}
	ctx, cancel := context.WithTimeout(browser, 90*time.Second)
	defer cancel()

	// Open the page, pick the photo in its file input and upload it.
	err = chromedp.Do(ctx,
		chromedp.Navigate(front+"/"),
		chromedp.WaitVisible(chromedp.ID("upload-form")),
		chromedp.SetUploadFiles(chromedp.ID("file"), []string{pick.path}),
		chromedp.WaitEnabled(chromedp.ID("upload-btn")),
		chromedp.Click(chromedp.ID("upload-btn")),
		chromedp.WaitVisible(chromedp.ID("result")),
	)
	if err != nil {
		t.Fatalf("upload %s through the page: %v", filepath.Base(pick.path), err)
	}
	status, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("status")))
	if err != nil {
		t.Fatal(err)
	}
	id, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID("result-id")))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("uploaded %s; the page says %q", filepath.Base(pick.path), status)
	if !strings.HasPrefix(status, "Stored as ") || id == "" {
		t.Fatalf("status %q, photo %q: want a stored photo", status, id)
	}

	// The gateway knows the photo and its sizes.
	resp, body := fetch(t, front+"/api/recent")
	var recent struct{ Photos []photo }
	if err := json.Unmarshal(body, &recent); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/api/recent: %d %v", resp.StatusCode, err)
	}
	var up photo
	for _, p := range recent.Photos {
		if p.ID == id {
			up = p
		}
	}
	if up.ID == "" {
		t.Fatalf("photo %s shown by the page is not among the recent uploads %s", id, body)
	}

	// All four images load in the page, at their stored sizes.
	const listImages = `Array.from(document.querySelectorAll("#sizes img")).map(i => ({src: i.src, complete: i.complete, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))`
	var imgs []pageImage
	eventually(t, 30*time.Second, "four images loaded in the page", func() error {
		if imgs, err = chromedp.Run(ctx, chromedp.Evaluate[[]pageImage](listImages)); err != nil {
			t.Fatal(err)
		}
		if len(imgs) != len(sizeLetters) {
			return fmt.Errorf("%d images in the page", len(imgs))
		}
		for _, img := range imgs {
			if !img.Complete || img.Width == 0 {
				return fmt.Errorf("%s not loaded yet (complete %v, naturalWidth %d)", img.Src, img.Complete, img.Width)
			}
		}
		return nil
	})
	for i, size := range sizeLetters {
		img, want := imgs[i], up.Sizes[size]
		if img.Src != up.URLs[size] {
			t.Errorf("size %s: the page loads %q, want %q", size, img.Src, up.URLs[size])
		}
		if img.Width != want.Width || img.Height != want.Height {
			t.Errorf("size %s: the browser decoded %d×%d, want %d×%d", size, img.Width, img.Height, want.Width, want.Height)
		}
	}

	// Keep a screenshot of the page with the photo.
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if _, err := png.DecodeConfig(bytes.NewReader(shot)); err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	path := filepath.Join(artifactsDir(t), "browser-upload.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the page: %s", path)
}
