//! The machines this build runs, by the id a genesis names (`kairos/3`, `kairos/2`, `kairos/1`, `counter/1`), and the
//! one place that turns such an id into a type: a replica is generic over its machine, and
//! whatever opens one (the CLI's subcommands, `join`, import) asks [`dispatch`] to run it with
//! the right type. Adding a machine is one line here.

use std::path::Path;

use anyhow::Result;
use chorus_core::{SignedEvent, genesis::Genesis, machine::CounterMachine};
use chorus_kairos::{Kairos2Machine, Kairos3Machine, KairosMachine};
use chorus_net::Addr;
use chorus_store::Replica;

use crate::describe::Describe;

/// The machine ids this build knows.
pub const MACHINES: &[&str] = &["kairos/3", "kairos/2", "kairos/1", "counter/1"];

/// A genesis names a machine this build does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the timeline runs machine {0:?}, which this build does not have (it has {MACHINES:?})")]
pub struct UnknownMachine(pub String);

/// Work to run with a machine type (a generic closure, which Rust spells as a trait).
pub trait WithMachine {
    type Output;
    fn run<M: Describe>(self) -> Self::Output;
}

/// Runs `task` with the machine type of `id`.
pub fn dispatch<T: WithMachine>(id: &str, task: T) -> Result<T::Output, UnknownMachine> {
    match id {
        "kairos/3" => Ok(task.run::<Kairos3Machine>()),
        "kairos/2" => Ok(task.run::<Kairos2Machine>()),
        "kairos/1" => Ok(task.run::<KairosMachine>()),
        "counter/1" => Ok(task.run::<CounterMachine>()),
        other => Err(UnknownMachine(other.to_string())),
    }
}

/// Creates the data directory `dir` of a replica of `genesis`'s timeline (nothing else in it
/// yet: the node catches up when it runs).
pub fn create_from_genesis(dir: &Path, genesis: SignedEvent) -> Result<()> {
    struct Create<'a>(&'a Path, SignedEvent);
    impl WithMachine for Create<'_> {
        type Output = Result<()>;
        fn run<M: Describe>(self) -> Result<()> {
            Replica::create_from_genesis(self.0, self.1, M::default())?;
            Ok(())
        }
    }
    let machine = Genesis::from_event(&genesis)?.body.machine;
    dispatch(&machine, Create(dir, genesis))?
}

/// What `chorus join` made.
#[derive(Debug, Clone)]
pub struct Joined {
    pub genesis: SignedEvent,
    pub body: Genesis,
}

/// `chorus join`: fetches the genesis from the peer at `addr` (as the node key `seed`), checks
/// it, and creates the replica in the data directory `dir` (which holds the node key already).
pub async fn join(dir: &Path, addr: Addr, seed: [u8; 32]) -> Result<Joined> {
    let genesis = crate::fetch_genesis(addr, seed).await?;
    let body = Genesis::from_event(&genesis)?;
    // An unknown machine is refused before anything is written.
    create_from_genesis(dir, genesis.clone())?;
    Ok(Joined { genesis, body })
}
