package storepb_test

import (
	"slices"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

func TestWriteRequestRoundTrip(t *testing.T) {
	in := &storepb.WriteRequest{
		Vid:        7,
		WriteToken: "token.for.vid7",
		Needles: []*storepb.Needle{
			{
				Key:                0x1f4a9,
				Cookie:             0x8c3e77d2a1b0c4f5,
				SizeCode:           0,
				ContentType:        1,
				Data:               []byte{0xff, 0xd8, 0xff, 0xe0},
				AppendTimeUnixNano: 1_700_000_000_123_456_789,
			},
			{
				Key:         0x1f4a9,
				Cookie:      0x8c3e77d2a1b0c4f5,
				SizeCode:    3,
				ContentType: 4,
				Data:        []byte("RIFF....WEBP"),
			},
		},
	}
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	out := new(storepb.WriteRequest)
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	if !proto.Equal(in, out) {
		t.Fatalf("round trip changed the message:\n in: %v\nout: %v", in, out)
	}
	if out.GetVid() != 7 || out.GetWriteToken() != "token.for.vid7" || len(out.GetNeedles()) != 2 {
		t.Fatalf("got vid %d, token %q, %d needles", out.GetVid(), out.GetWriteToken(), len(out.GetNeedles()))
	}
	n := out.GetNeedles()[0]
	if n.GetKey() != 0x1f4a9 || n.GetCookie() != 0x8c3e77d2a1b0c4f5 || n.GetSizeCode() != 0 ||
		n.GetContentType() != 1 || string(n.GetData()) != "\xff\xd8\xff\xe0" ||
		n.GetAppendTimeUnixNano() != 1_700_000_000_123_456_789 || n.GetChecksum() != 0 {
		t.Fatalf("needle 0 = %v", n)
	}
	if n := out.GetNeedles()[1]; n.GetSizeCode() != 3 || n.GetContentType() != 4 || n.GetAppendTimeUnixNano() != 0 {
		t.Fatalf("needle 1 = %v", n)
	}
}

// TestWireNumbers pins the field numbers that the wire format depends on, so a
// renumbering in store.proto fails here rather than between two releases.
func TestWireNumbers(t *testing.T) {
	want := map[string]map[string]protoreflect.FieldNumber{
		"Needle": {
			"key": 1, "cookie": 2, "size_code": 3, "content_type": 4, "data": 5,
			"append_time_unix_nano": 6, "checksum": 7,
		},
		"WriteRequest":  {"vid": 1, "needles": 2, "write_token": 3},
		"DeleteRequest": {"vid": 1, "key": 2, "cookie": 3, "size_code": 4, "write_token": 5, "append_time_unix_nano": 6},
		"ReadRequest":   {"vid": 1, "key": 2, "cookie": 3, "size_code": 4, "include_raw": 5},
		"VolumeInfo": {
			"vid": 1, "state": 2, "read_only_reason": 3, "size_bytes": 4, "size_limit_bytes": 5,
			"needle_count": 6, "deleted_bytes": 7, "compaction_generation": 8, "created_unix_nano": 9,
			"ec_shard_ids": 10, "ec_deleted_count": 11, "ec_journal_digest": 16, "last_append_unix_nano": 17,
		},
	}
	msgs := storepb.File_haybale_v1_store_proto.Messages()
	for name, fields := range want {
		md := msgs.ByName(protoreflect.Name(name))
		if md == nil {
			t.Errorf("message %s missing", name)
			continue
		}
		if got, want := md.Fields().Len(), len(fields); got != want {
			t.Errorf("%s has %d fields, want %d", name, got, want)
		}
		for field, num := range fields {
			fd := md.Fields().ByName(protoreflect.Name(field))
			if fd == nil {
				t.Errorf("%s.%s missing", name, field)
				continue
			}
			if fd.Number() != num {
				t.Errorf("%s.%s is field %d, want %d", name, field, fd.Number(), num)
			}
		}
	}
}

func TestStoreServiceMethods(t *testing.T) {
	want := []string{"Write", "Delete", "Read", "AllocateVolume", "VolumeStatus", "MarkReadOnly", "Compact", "CopyVolume", "ReplicateVolume", "ListNeedles",
		"EcShardRead", "EcEncode", "EcDecode", "EcShardCopy", "EcShardMount", "EcShardDelete", "EcRebuild", "EcIndexSync"}
	serverStreaming := map[string]bool{"CopyVolume": true, "ReplicateVolume": true, "ListNeedles": true, "EcShardCopy": true}

	sd := storepb.File_haybale_v1_store_proto.Services().ByName("Store")
	if sd == nil {
		t.Fatal("service haybale.v1.Store missing from the file descriptor")
	}
	if sd.FullName() != "haybale.v1.Store" {
		t.Errorf("service full name = %s", sd.FullName())
	}
	var got []string
	for i := range sd.Methods().Len() {
		m := sd.Methods().Get(i)
		got = append(got, string(m.Name()))
		if m.IsStreamingClient() || m.IsStreamingServer() != serverStreaming[string(m.Name())] {
			t.Errorf("%s: client streaming %v, server streaming %v", m.Name(), m.IsStreamingClient(), m.IsStreamingServer())
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("descriptor methods = %v, want %v", got, want)
	}

	if storepb.Store_ServiceDesc.ServiceName != "haybale.v1.Store" {
		t.Errorf("ServiceDesc name = %s", storepb.Store_ServiceDesc.ServiceName)
	}
	// The generated ServiceDesc lists unary methods before streams.
	if got := grpcMethods(storepb.Store_ServiceDesc); !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))) {
		t.Errorf("ServiceDesc methods = %v, want %v", got, want)
	}
}

func TestVolumeStates(t *testing.T) {
	want := map[storepb.VolumeState]string{
		0: "VOLUME_STATE_UNSPECIFIED",
		1: "VOLUME_STATE_WRITABLE",
		2: "VOLUME_STATE_READ_ONLY",
		3: "VOLUME_STATE_SEALED",
		4: "VOLUME_STATE_EC",
		5: "VOLUME_STATE_FAILED",
	}
	for v, name := range want {
		if v.String() != name {
			t.Errorf("VolumeState(%d) = %s, want %s", v, v, name)
		}
	}
	if n := storepb.VolumeState(0).Descriptor().Values().Len(); n != len(want) {
		t.Errorf("VolumeState has %d values, want %d", n, len(want))
	}
}

// grpcMethods lists the names of every method, unary or streaming, of sd.
func grpcMethods(sd grpc.ServiceDesc) []string {
	var names []string
	for _, m := range sd.Methods {
		names = append(names, m.MethodName)
	}
	for _, s := range sd.Streams {
		names = append(names, s.StreamName)
	}
	return names
}
