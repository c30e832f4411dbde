//! A cloneable handle on a running node for the tasks that live beside the actor (the HTTP
//! API, the gateway, the emissaries): questions go to the actor over its bounded queue, new
//! events come from the live feed.

use std::sync::Arc;

use chorus_core::{EventId, SignedEvent};
use ipld_core::ipld::Ipld;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{
    actor::{ApiRequest, NodeMsg},
    election::{Election, ElectionList},
    feed::Feed,
    status::NodeStatus,
    write::WriteError,
};

/// The node stopped (shutdown) before it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node is shutting down")]
pub struct NodeGone;

#[derive(Clone)]
pub struct NodeHandle {
    node: mpsc::Sender<NodeMsg>,
    feed: Feed,
}

impl NodeHandle {
    pub fn new(node: mpsc::Sender<NodeMsg>, feed: Feed) -> Self {
        Self { node, feed }
    }

    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
    ) -> Result<T, NodeGone> {
        let (tx, rx) = oneshot::channel();
        self.node
            .send(NodeMsg::Api(make(tx)))
            .await
            .map_err(|_| NodeGone)?;
        rx.await.map_err(|_| NodeGone)
    }

    /// Whether the actor still runs (its inbox is open): a stopped actor answers nothing.
    pub fn is_alive(&self) -> bool {
        !self.node.is_closed()
    }

    /// The node's status at one instant, as the actor copied it out.
    pub async fn status(&self) -> Result<Arc<NodeStatus>, NodeGone> {
        self.ask(ApiRequest::Status).await
    }

    pub async fn state(&self) -> Result<Value, NodeGone> {
        self.ask(ApiRequest::State).await
    }

    /// Appends events signed by this node; `Ok(Err(why))` when the node refused them.
    pub async fn append(
        &self,
        items: Vec<(String, Ipld)>,
    ) -> Result<Result<Vec<EventId>, WriteError>, NodeGone> {
        self.ask(|reply| ApiRequest::Append { items, reply }).await
    }

    /// One stimulus's election as of the last complete fold.
    pub async fn election(&self, stimulus: EventId) -> Result<Option<Election>, NodeGone> {
        self.ask(|reply| ApiRequest::Election { stimulus, reply })
            .await
    }

    /// Every election the state tracks, oldest first.
    pub async fn elections(&self) -> Result<ElectionList, NodeGone> {
        self.ask(ApiRequest::Elections).await
    }

    /// One event by id (`None`: not held here).
    pub async fn event(&self, id: EventId) -> Result<Option<Arc<SignedEvent>>, NodeGone> {
        self.ask(|reply| ApiRequest::Event { id, reply }).await
    }

    /// New events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<SignedEvent>> {
        self.feed.subscribe()
    }

    /// Every change of an election from now on, pushed after the fold that made it.
    pub fn subscribe_elections(&self) -> broadcast::Receiver<Arc<Election>> {
        self.feed.subscribe_elections()
    }

    /// How many times the timeline grew so far (appended or received events).
    pub fn timeline_changes(&self) -> u64 {
        self.feed.changes()
    }
}
