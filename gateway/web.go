package gateway

import "embed"

// webFiles holds the web page served at / and its assets under /static/.
// The page loads nothing from other origins except the photos' images.
//
//go:embed web/index.html web/app.js web/style.css
var webFiles embed.FS
