package directory

import (
	"github.com/haybale/haybale/internal/pki"
	"github.com/haybale/haybale/internal/rpc"
	"github.com/haybale/haybale/proto/haybale/v1/directorypb"
)

// Policy is who may call each method of the Directory service on a TLS
// plane (the table in directory.proto). Heartbeat is further bound to the
// store ID the caller's certificate names. The directory role is listed on
// the methods a follower forwards to the leader when it cannot serve them
// (forward.go): the follower checked the caller's role first. Stores may
// look volumes up, to find the holders of an EC volume's shards.
var Policy = rpc.Policy{
	directorypb.Directory_Assign_FullMethodName:          {pki.RoleGateway, pki.RoleOperator, pki.RoleDirectory},
	directorypb.Directory_AuthorizeDelete_FullMethodName: {pki.RoleGateway, pki.RoleOperator, pki.RoleDirectory},
	directorypb.Directory_Lookup_FullMethodName:          {pki.RoleGateway, pki.RoleCache, pki.RoleOperator, pki.RoleDirectory, pki.RoleStore},
	directorypb.Directory_PhotoURLs_FullMethodName:       {pki.RoleGateway, pki.RoleOperator, pki.RoleDirectory},
	directorypb.Directory_ListStores_FullMethodName:      {pki.RoleOperator},
	directorypb.Directory_ListVolumes_FullMethodName:     {pki.RoleOperator},
	directorypb.Directory_MarkReadOnly_FullMethodName:    {pki.RoleOperator, pki.RoleDirectory},
	directorypb.Directory_Heartbeat_FullMethodName:       {pki.RoleStore},
	directorypb.Directory_AddMember_FullMethodName:       {pki.RoleOperator, pki.RoleDirectory},
	directorypb.Directory_RemoveMember_FullMethodName:    {pki.RoleOperator, pki.RoleDirectory},
	directorypb.Directory_RemoveStore_FullMethodName:     {pki.RoleOperator, pki.RoleDirectory},
	directorypb.Directory_EcEncode_FullMethodName:        {pki.RoleOperator, pki.RoleDirectory},
}
