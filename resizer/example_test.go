package resizer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"

	"github.com/haybale/haybale/resizer"
)

func Example() {
	// An upload: here a 3000×1000 PNG made in code.
	m := image.NewNRGBA(image.Rect(0, 0, 3000, 1000))
	for i := range m.Pix {
		m.Pix[i] = 200 // a light, opaque gray
		if i%4 == 3 {
			m.Pix[i] = 255
		}
	}
	var upload bytes.Buffer
	if err := png.Encode(&upload, m); err != nil {
		panic(err)
	}

	r := resizer.New(resizer.Options{}) // 32 MiB, 80 MP, NumCPU decodes
	res, err := r.Process(context.Background(), upload.Bytes())
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s %dx%d\n", res.Format, res.Width, res.Height)
	for _, img := range res.Images {
		fmt.Printf("%s %dx%d %s\n", img.Letter, img.Width, img.Height, img.ContentType)
	}
	// Output:
	// png 3000x1000
	// t 150x150 image/jpeg
	// s 480x160 image/jpeg
	// m 1080x360 image/jpeg
	// l 2048x683 image/jpeg
}

func ExampleResizer_Process_errors() {
	r := resizer.New(resizer.Options{MaxPixels: 1_000_000})
	big := image.NewGray(image.Rect(0, 0, 2000, 1000))
	big.SetGray(0, 0, color.Gray{Y: 1})
	var buf bytes.Buffer
	if err := png.Encode(&buf, big); err != nil {
		panic(err)
	}
	for _, upload := range [][]byte{nil, []byte("hello"), buf.Bytes()} {
		_, err := r.Process(context.Background(), upload)
		switch {
		case errors.Is(err, resizer.ErrEmpty):
			fmt.Println("400:", err)
		case errors.Is(err, resizer.ErrUnsupported):
			fmt.Println("415:", err)
		case errors.Is(err, resizer.ErrTooLarge):
			fmt.Println("413:", err)
		case errors.Is(err, resizer.ErrCorrupt):
			fmt.Println("422:", err)
		}
	}
	// Output:
	// 400: resizer: empty image
	// 415: resizer: unsupported image format: text
	// 413: resizer: image too large: image is 2000x1000 (2 MP), over the 1 MP limit
}
