//! Who may connect to a node of a private timeline (genesis `access: members/1`): the
//! libp2p identities of the current members and of the read-only keys the genesis names. A
//! node's libp2p identity is its member key (chorus-net), so a member's identity is known from
//! the membership alone. Public timelines have no list: anyone may connect, only members write.

use chorus_core::{Machine, Timeline};
use chorus_net::Peer;

/// The identities allowed to connect, or `None` for a public timeline.
pub fn allowed<M: Machine>(tl: &Timeline<M>) -> Option<Vec<Peer>> {
    let g = tl.genesis();
    if !g.is_private() {
        return None;
    }
    let members = tl.membership().current().into_iter().map(|(k, _)| k);
    Some(
        members
            .chain(g.readers.iter().copied())
            // A key that is no Ed25519 point has no identity: nobody connects as it.
            .filter_map(|k| chorus_net::peer_id_of_author(&k.0))
            .collect(),
    )
}
