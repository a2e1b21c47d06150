//! How many requests a client keeps in flight: up to `max_in_flight`, halved when the
//! server shows strain (429, 5xx, a timeout) and grown back by one per window's worth of
//! answers (AIMD, as TCP does), so a struggling server gets fewer requests at once
//! without an operator lowering the setting.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The window and the requests in it.
pub struct Window {
    max: usize,
    state: Mutex<State>,
    freed: Notify,
}

struct State {
    /// The current limit; requests may start while fewer than its floor are in flight.
    limit: f64,
    in_flight: usize,
    /// When the limit was last halved: strain reported by requests already in flight then
    /// is the same episode, not a new one.
    cut_at: Option<Instant>,
}

/// A request's place in the window; leaving it lets the next one start.
pub struct Slot<'a> {
    window: &'a Window,
    started: Instant,
}

/// How an answer went, for the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    Fine,
    /// 429, a 5xx or no answer in time.
    Strained,
}

impl Window {
    pub fn new(max: usize) -> Window {
        let max = max.max(1);
        Window {
            max,
            state: Mutex::new(State {
                limit: max as f64,
                in_flight: 0,
                cut_at: None,
            }),
            freed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for room in the window.
    pub async fn enter(&self) -> Slot<'_> {
        loop {
            let freed = self.freed.notified();
            {
                let mut s = self.state();
                if s.in_flight < (s.limit as usize).max(1) {
                    s.in_flight += 1;
                    return Slot {
                        window: self,
                        started: Instant::now(),
                    };
                }
            }
            freed.await;
        }
    }

    /// Requests in flight now, and the current limit.
    pub fn now(&self) -> (usize, usize) {
        let s = self.state();
        (s.in_flight, (s.limit as usize).max(1))
    }
}

impl Slot<'_> {
    /// Leaves the window, adjusting it by how the answer went; how long the request took.
    pub fn done(self, answer: Answer) -> Duration {
        let took = self.started.elapsed();
        let w = self.window;
        let mut s = w.state();
        match answer {
            Answer::Fine => {
                s.limit = (s.limit + 1.0 / s.limit).min(w.max as f64);
            }
            Answer::Strained if s.cut_at.is_none_or(|at| self.started > at) => {
                s.limit = (s.limit / 2.0).max(1.0);
                s.cut_at = Some(Instant::now());
                tracing::debug!(
                    limit = s.limit as usize,
                    "the server shows strain: fewer requests in flight"
                );
            }
            Answer::Strained => {}
        }
        took
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.window.state().in_flight -= 1;
        self.window.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn strain_halves_the_window_once_per_episode_and_answers_grow_it_back() {
        let w = Window::new(16);
        let slots: Vec<Slot> = futures::future::join_all((0..16).map(|_| w.enter())).await;
        assert_eq!(w.now(), (16, 16));
        let mut slots = slots.into_iter();
        // Sixteen requests in flight all see the same overloaded server: one halving.
        for s in slots.by_ref().take(15) {
            s.done(Answer::Strained);
        }
        assert_eq!(w.now(), (1, 8));
        // A request started after the cut reports strain again: a new episode.
        let late = w.enter().await;
        late.done(Answer::Strained);
        assert_eq!(w.now().1, 4);
        for s in slots {
            s.done(Answer::Fine);
        }
        for _ in 0..200 {
            w.enter().await.done(Answer::Fine);
        }
        assert_eq!(w.now(), (0, 16), "grown back, never past the maximum");
    }

    #[tokio::test]
    async fn a_full_window_makes_the_next_request_wait_for_a_slot() {
        let w = std::sync::Arc::new(Window::new(1));
        let first = w.enter().await;
        let w2 = w.clone();
        let waiting = tokio::spawn(async move { w2.enter().await.done(Answer::Fine) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a second request started in a window of one"
        );
        first.done(Answer::Fine);
        waiting.await.unwrap();
    }
}
