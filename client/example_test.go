package client_test

import (
	"context"
	"fmt"
	"log"

	"github.com/haybale/haybale/client"
	"github.com/haybale/haybale/needle"
)

// Write a photo's sizes to every replica, then read one back.
func ExampleClient_WritePhoto() {
	cl, err := client.New(client.Options{Directory: "directory.internal:7070"})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()
	ctx := context.Background()
	id, err := cl.WritePhoto(ctx, []client.Image{
		{Size: needle.SizeThumb, ContentType: needle.TypeJPEG, Data: []byte("...thumbnail bytes...")},
		{Size: needle.SizeSmall, ContentType: needle.TypeJPEG, Data: []byte("...small bytes...")},
	})
	if err != nil {
		log.Fatal(err)
	}
	img, err := cl.Read(ctx, id, needle.SizeThumb)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(id, img.ContentType, len(img.Data))
}

// Delete a photo on every replica.
func ExampleClient_Delete() {
	cl, err := client.New(client.Options{Directory: "directory.internal:7070"})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()
	id, err := needle.ParsePhotoID("7-1f4a9-8c3e77d2a1b0c4f5")
	if err != nil {
		log.Fatal(err)
	}
	if err := cl.Delete(context.Background(), id); err != nil {
		log.Fatal(err)
	}
}

// Build the URLs of a photo's four sizes under the directory's URL policy.
func ExampleClient_PhotoURLs() {
	cl, err := client.New(client.Options{Directory: "directory.internal:7070"})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()
	id, _ := needle.ParsePhotoID("7-1f4a9-8c3e77d2a1b0c4f5")
	urls, err := cl.PhotoURLs(context.Background(), id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(urls["m"])
}
