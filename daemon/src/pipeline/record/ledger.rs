//! The recorder's bookkeeping, pure: which PUBACKs it owes, for which journal sequence,
//! and which refused records wait for another try. The journal is passed in as an append
//! function, so every rule here is tested without one.

use std::collections::{HashMap, VecDeque};

use reflex_journal::store::StoreError;

use super::MAX_RETAINED;
use crate::pipeline::types::{EventKey, HeldAck};

/// Acks waiting for their journal sequence to become durable, in append order.
#[derive(Debug, Default)]
pub struct PendingAcks {
    queue: VecDeque<(u64, HeldAck)>,
}

impl PendingAcks {
    /// Holds `ack` until `seq` is durable (kept in sequence order).
    pub fn push(&mut self, seq: u64, ack: HeldAck) {
        if self.queue.back().is_none_or(|(s, _)| *s <= seq) {
            self.queue.push_back((seq, ack));
        } else {
            // A redelivery's ack for an earlier record.
            let at = self.queue.partition_point(|(s, _)| *s <= seq);
            self.queue.insert(at, (seq, ack));
        }
    }

    /// The acks whose sequence is at or below `durable`, in order.
    pub fn release(&mut self, durable: u64) -> Vec<HeldAck> {
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|(s, _)| *s <= durable) {
            if let Some((_, a)) = self.queue.pop_front() {
                out.push(a);
            }
        }
        out
    }

    /// Takes out the acks held for sequences in `lo..hi`, with their sequences.
    pub fn take_range(&mut self, lo: u64, hi: u64) -> Vec<(u64, HeldAck)> {
        let start = self.queue.partition_point(|(s, _)| *s < lo);
        let end = self.queue.partition_point(|(s, _)| *s < hi);
        self.queue.drain(start..end.max(start)).collect()
    }

    /// Everything still held.
    pub fn drain(&mut self) -> Vec<HeldAck> {
        self.queue.drain(..).map(|(_, a)| a).collect()
    }

    /// Number of acks held.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no ack is held.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Where an event whose PUBACK is deferred stands.
#[derive(Debug)]
enum KeyState {
    /// In the engine: its decision has not reached the recorder. Holds the acks of its
    /// redeliveries meanwhile.
    Deciding(Vec<HeldAck>),
    /// Refused by the journal, waiting in [`Ledger`]'s retained queue.
    Retained,
    /// Appended at this journal sequence, not yet durable.
    Appended(u64),
    /// Refused and given up (more than [`MAX_RETAINED`] waiting): never acked this run.
    Lost,
}

/// A refused record waiting for the journal, with the acks it releases.
#[derive(Debug)]
struct Retained {
    key: Option<EventKey>,
    bytes: Vec<u8>,
    acks: Vec<HeldAck>,
}

/// What the recorder knows about every event whose PUBACK it still owes (pure state; the
/// journal is passed in as an append function). Entries leave once durable, so it holds
/// at most the broker's in-flight window.
#[derive(Debug, Default)]
pub struct Ledger {
    keys: HashMap<EventKey, KeyState>,
    /// Appended, not yet durable, in journal order, with the record (appended again if a
    /// reopened journal lost it).
    appended: VecDeque<(u64, EventKey, Vec<u8>)>,
    /// Refused by the journal, in decision order.
    retained: VecDeque<Retained>,
    pending: PendingAcks,
}

/// What [`Ledger::decided`] did with a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Filed {
    /// Appended (or queued behind earlier refused records, which all went in).
    Appended,
    /// Refused: kept for another try.
    Retained,
    /// Refused, and too many are waiting: given up.
    GivenUp,
}

impl Ledger {
    /// An event with a deferred PUBACK entered the engine.
    pub fn accepted(&mut self, key: EventKey) {
        self.keys
            .entry(key)
            .or_insert_with(|| KeyState::Deciding(Vec::new()));
    }

    /// A redelivery of `key`: returns its ack when it can go now (the original's record is
    /// durable, or was journaled in an earlier run); otherwise holds it with the original.
    pub fn duplicate(&mut self, key: &EventKey, ack: HeldAck) -> Option<HeldAck> {
        match self.keys.get_mut(key) {
            None => Some(ack),
            Some(KeyState::Deciding(acks)) => {
                acks.push(ack);
                None
            }
            Some(KeyState::Appended(seq)) => {
                self.pending.push(*seq, ack);
                None
            }
            Some(KeyState::Retained) => {
                if let Some(r) = self
                    .retained
                    .iter_mut()
                    .find(|r| r.key.as_ref() == Some(key))
                {
                    r.acks.push(ack);
                }
                None
            }
            // Not journaled: the broker keeps it (a restart journals it).
            Some(KeyState::Lost) => None,
        }
    }

    /// A decision's record (`bytes`) for `key` with its own ack: appends it behind any
    /// refused ones (`append` is the journal).
    pub fn decided(
        &mut self,
        key: Option<EventKey>,
        ack: Option<HeldAck>,
        bytes: Vec<u8>,
        append: impl FnMut(&[u8]) -> Result<u64, StoreError>,
    ) -> (Filed, Option<StoreError>) {
        let mut acks: Vec<HeldAck> = ack.into_iter().collect();
        if let Some(k) = &key {
            if let Some(KeyState::Deciding(dups)) = self.keys.remove(k) {
                acks.extend(dups);
            }
            if !acks.is_empty() {
                self.keys.insert(k.clone(), KeyState::Retained);
            }
        }
        let key = key.filter(|_| !acks.is_empty());
        self.retained.push_back(Retained { key, bytes, acks });
        let err = self.retry(append).err();
        if self.retained.is_empty() {
            return (Filed::Appended, err);
        }
        if self.retained.len() > MAX_RETAINED {
            if let Some(r) = self.retained.pop_back() {
                if let Some(k) = r.key {
                    self.keys.insert(k, KeyState::Lost);
                }
            }
            return (Filed::GivenUp, err);
        }
        (Filed::Retained, err)
    }

    /// Offers the refused records to the journal again, oldest first, until one is refused.
    pub fn retry(
        &mut self,
        mut append: impl FnMut(&[u8]) -> Result<u64, StoreError>,
    ) -> Result<(), StoreError> {
        while let Some(r) = self.retained.front() {
            let seq = append(&r.bytes)?;
            let Some(r) = self.retained.pop_front() else {
                break;
            };
            for a in r.acks {
                self.pending.push(seq, a);
            }
            if let Some(k) = r.key {
                self.keys.insert(k.clone(), KeyState::Appended(seq));
                self.appended.push_back((seq, k, r.bytes));
            }
        }
        Ok(())
    }

    /// The journal is durable through `through`: the acks that can go now.
    pub fn durable(&mut self, through: u64) -> Vec<HeldAck> {
        while self.appended.front().is_some_and(|(s, _, _)| *s <= through) {
            if let Some((seq, k, _)) = self.appended.pop_front() {
                // A later duplicate record cannot exist, but check the state anyway.
                if matches!(self.keys.get(&k), Some(KeyState::Appended(s)) if *s == seq) {
                    self.keys.remove(&k);
                }
            }
        }
        self.pending.release(through)
    }

    /// The journal was reopened after an I/O error: everything through `kept_through` is
    /// durable (the acks that can go now are returned); records appended at sequences
    /// `kept_through + 1 .. lost_before` were lost with the broken handle, so those that
    /// owe a PUBACK go back to the front of the refused queue, with their acks, to be
    /// appended again (records that owe none, QoS 0 input, are not kept).
    pub fn reopened(&mut self, kept_through: u64, lost_before: u64) -> Vec<HeldAck> {
        let acks = self.durable(kept_through);
        let mut lost_acks = self.pending.take_range(kept_through + 1, lost_before);
        let mut back = Vec::new();
        while self
            .appended
            .front()
            .is_some_and(|(s, _, _)| *s < lost_before)
        {
            let Some((seq, key, bytes)) = self.appended.pop_front() else {
                break;
            };
            let (mine, rest): (Vec<_>, Vec<_>) =
                lost_acks.into_iter().partition(|(s, _)| *s == seq);
            lost_acks = rest;
            self.keys.insert(key.clone(), KeyState::Retained);
            back.push(Retained {
                key: Some(key),
                bytes,
                acks: mine.into_iter().map(|(_, a)| a).collect(),
            });
        }
        for r in back.into_iter().rev() {
            self.retained.push_front(r);
        }
        acks
    }

    /// Refused records waiting for the journal.
    pub fn retained(&self) -> usize {
        self.retained.len()
    }

    /// Events whose PUBACK is still owed (deciding, refused or not yet durable).
    pub fn owed(&self) -> usize {
        self.keys.len()
    }

    /// Every ack held for an appended record (after the last group commit).
    pub(super) fn drain_appended(&mut self) -> Vec<HeldAck> {
        self.pending.drain()
    }
}
