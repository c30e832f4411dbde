//! What `GET /v1/status` reports: the typed view the actor builds ([`view::NodeStatus`], plain
//! data copied out of the node) and the cache that serializes it off the actor thread and
//! shares it between concurrent requests ([`cache::StatusCache`]).

pub mod cache;
pub mod view;

pub use cache::{Snapshot, StatusCache, merge_objects};
pub use view::{
    FinalityView, FoldStats, Folding, LightNodeStatus, NodeStatus, Received, SyncStatus,
};
