package directorypb_test

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
	"github.com/haybale/haybale/proto/haybale/v1/storepb"
)

func TestDirectoryServiceMethods(t *testing.T) {
	type kind struct{ clientStream, serverStream bool }
	want := []struct {
		name string
		kind kind
	}{
		{"Assign", kind{}},
		{"Lookup", kind{}},
		{"ListStores", kind{}},
		{"ListVolumes", kind{}},
		{"MarkReadOnly", kind{}},
		{"Heartbeat", kind{true, true}},
		{"PhotoURLs", kind{}},
		{"AuthorizeDelete", kind{}},
		{"AddMember", kind{}},
		{"RemoveMember", kind{}},
		{"RemoveStore", kind{}},
		{"EcEncode", kind{false, true}},
	}

	sd := directorypb.File_haybale_v1_directory_proto.Services().ByName("Directory")
	if sd == nil {
		t.Fatal("service haybale.v1.Directory missing from the file descriptor")
	}
	if got := sd.Methods().Len(); got != len(want) {
		t.Errorf("descriptor has %d methods, want %d", got, len(want))
	}
	for _, w := range want {
		m := sd.Methods().ByName(protoreflect.Name(w.name))
		if m == nil {
			t.Errorf("method %s missing", w.name)
			continue
		}
		if got := (kind{m.IsStreamingClient(), m.IsStreamingServer()}); got != w.kind {
			t.Errorf("%s streaming = %+v, want %+v", w.name, got, w.kind)
		}
	}

	gd := directorypb.Directory_ServiceDesc
	if gd.ServiceName != "haybale.v1.Directory" {
		t.Errorf("ServiceDesc name = %s", gd.ServiceName)
	}
	var got []string
	for _, m := range gd.Methods {
		got = append(got, m.MethodName)
	}
	for _, s := range gd.Streams {
		got = append(got, s.StreamName)
	}
	var names []string
	for _, w := range want {
		names = append(names, w.name)
	}
	slices.Sort(got)
	slices.Sort(names)
	if !slices.Equal(got, names) {
		t.Errorf("ServiceDesc methods = %v, want %v", got, names)
	}
}

func TestHeartbeatRoundTrip(t *testing.T) {
	in := &directorypb.HeartbeatRequest{
		StoreId:   "store-a",
		GrpcAddr:  "10.0.0.1:7070",
		HttpAddr:  "10.0.0.1:8080",
		Rack:      "r1",
		FreeBytes: 1 << 40,
		Volumes: []*storepb.VolumeInfo{{
			Vid:            7,
			State:          storepb.VolumeState_VOLUME_STATE_READ_ONLY,
			ReadOnlyReason: "full",
			SizeBytes:      32 << 30,
			NeedleCount:    4_000_000,
			// Fields are compared after the round trip.
			LastAppendUnixNano: 1_790_000_000_000_000_000,
		}},
		Corrupt: []*directorypb.CorruptReport{{Vid: 7, Key: 0x1f4a9, SizeCode: 2, Detail: "checksum mismatch"}},
	}
	resp := &directorypb.HeartbeatResponse{
		IntervalMs: 5000,
		Commands: []*directorypb.StoreCommand{
			{Command: &directorypb.StoreCommand_AllocateVolume{AllocateVolume: &storepb.AllocateVolumeRequest{Vid: 8}}},
			{Command: &directorypb.StoreCommand_MarkReadOnly{MarkReadOnly: &storepb.MarkReadOnlyRequest{Vid: 7, Reason: "operator"}}},
		},
	}
	for _, m := range []proto.Message{in, resp} {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		out := m.ProtoReflect().New().Interface()
		if err := proto.Unmarshal(b, out); err != nil {
			t.Fatalf("Unmarshal: %v", err)
		}
		if !proto.Equal(m, out) {
			t.Errorf("round trip changed the message:\n in: %v\nout: %v", m, out)
		}
	}
}
