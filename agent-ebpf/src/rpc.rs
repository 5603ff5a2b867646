//! NFS RPC tasks in flight.

/// Capacity of the in-flight RPC task map (sunrpc tasks of every RPC client on the host).
pub const RPC_MAP_ENTRIES: u32 = 16_384;

/// Key of an RPC task in flight: the sunrpc client (`rpc_clnt.cl_clid`) and the task's id
/// (`tk_pid`, which is 0 on kernels built without `CONFIG_SUNRPC_DEBUG`; the value's count
/// then covers every task of the client).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RpcKey {
    pub client_id: u32,
    pub task_id: u32,
}
