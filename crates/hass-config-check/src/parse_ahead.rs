//! Reads and parses the files of an `!include_dir_*` on a second thread while
//! the loader builds them, in order, on its own. Parsing is most of a check's
//! time and needs nothing from the loader; building needs the loader's state
//! (diagnostics, secrets, the include chain), so it stays on one thread and
//! reports exactly what a single-threaded load would.
//!
//! The loader takes files from the front and the helper from the back, so
//! neither waits for long: where they meet depends on how fast each goes.

use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use crate::loader::{Parsed, read_and_parse};

/// Below this many files a thread costs more than it saves.
const THREAD_FROM: usize = 8;

/// The files of one folder include and who parses which.
pub(crate) struct ParseAhead<'a> {
    files: &'a [PathBuf],
    state: Mutex<State>,
    ready: Condvar,
}

struct State {
    /// Files before this one the loader has taken.
    front: usize,
    /// Files from this one on belong to the helper.
    back: usize,
    /// What the helper has parsed and the loader not yet taken.
    parsed: Vec<Option<Parsed>>,
}

impl<'a> ParseAhead<'a> {
    pub(crate) fn new(files: &'a [PathBuf]) -> Self {
        ParseAhead {
            files,
            state: Mutex::new(State {
                front: 0,
                back: files.len(),
                parsed: files.iter().map(|_| None).collect(),
            }),
            ready: Condvar::new(),
        }
    }

    /// Runs `load` with a helper thread parsing from the back when the folder
    /// is large enough. If no thread can be started, `load` parses everything
    /// itself.
    pub(crate) fn run<T>(&self, load: impl FnOnce(&Self) -> T) -> T {
        if self.files.len() < THREAD_FROM {
            return load(self);
        }
        thread::scope(|scope| {
            // Without a helper (no thread to be had), `take` parses every file.
            let _helper = thread::Builder::new()
                .name("parse-ahead".to_owned())
                .spawn_scoped(scope, || self.parse_from_back());
            let result = load(self);
            // Whatever the loader did not take is not needed: let the helper stop.
            let mut state = self.lock();
            state.front = state.back;
            drop(state);
            result
        })
    }

    /// File `index`, read and parsed: by the helper if it got there first,
    /// otherwise here. Called for each file in order.
    pub(crate) fn take(&self, index: usize) -> Parsed {
        let mut state = self.lock();
        if index >= state.back {
            loop {
                if let Some(parsed) = state.parsed[index].take() {
                    return parsed;
                }
                state = self
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
        state.front = index + 1;
        drop(state);
        read_and_parse(&self.files[index])
    }

    fn parse_from_back(&self) {
        loop {
            let index = {
                let mut state = self.lock();
                if state.back <= state.front {
                    return;
                }
                state.back -= 1;
                state.back
            };
            let parsed = read_and_parse(&self.files[index]);
            self.lock().parsed[index] = Some(parsed);
            self.ready.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one is still sound.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
