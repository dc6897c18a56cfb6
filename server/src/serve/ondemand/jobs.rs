//! The job table of diffs made on request: one job per key however many requests ask
//! for it, at most `limit` jobs pending (queued or running) — a request past that is
//! told to come back later rather than queued without bound — and at most `running`
//! of them on the blocking pool at once (one by default: a diff takes a core and
//! memory in proportion to the release for up to a minute).
//!
//! A job's result goes to every request waiting for it; a request waits a bounded
//! time ([`Ticket::wait`]) and the job goes on when it stops waiting, so a later
//! request (or the next agent) finds its result. A finished job leaves the table: its
//! result lives on wherever the work put it (for diffs, the repository's index).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

/// Pending jobs by key.
pub struct Jobs<K, V> {
    pending: Mutex<HashMap<K, watch::Receiver<Option<V>>>>,
    limit: usize,
    running: Arc<Semaphore>,
}

/// What [`Jobs::join`] did.
pub enum Joined<V> {
    /// A new job for the key, queued for a running slot.
    Started(Ticket<V>),
    /// The key's job was already pending: this waits for the same one.
    Joined(Ticket<V>),
    /// `limit` jobs are pending already: nothing was started.
    Full,
}

/// A wait for one job's result.
pub struct Ticket<V> {
    rx: watch::Receiver<Option<V>>,
}

/// What [`Ticket::wait`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited<V> {
    Done(V),
    /// Still queued or running after the wait.
    Pending,
    /// The job ended without a result (its work panicked).
    Lost,
}

impl<K, V> Jobs<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A table running at most `running` jobs at once (at least 1) with at most
    /// `limit` pending (at least `running`).
    pub fn new(running: usize, limit: usize) -> Arc<Jobs<K, V>> {
        let running = running.max(1);
        Arc::new(Jobs {
            pending: Mutex::new(HashMap::new()),
            limit: limit.max(running),
            running: Arc::new(Semaphore::new(running)),
        })
    }

    /// Joins the pending job of `key`, or starts `work` for it: on tokio's blocking
    /// pool once a running slot is free. Must be called within a tokio runtime.
    pub fn join<F>(self: &Arc<Self>, key: K, work: F) -> Joined<V>
    where
        F: FnOnce() -> V + Send + 'static,
    {
        let mut pending = self.lock();
        if let Some(rx) = pending.get(&key) {
            return Joined::Joined(Ticket { rx: rx.clone() });
        }
        if pending.len() >= self.limit {
            return Joined::Full;
        }
        let (tx, rx) = watch::channel(None);
        pending.insert(key.clone(), rx.clone());
        drop(pending);
        let jobs = self.clone();
        tokio::spawn(async move {
            // The semaphore is never closed, so acquiring only waits.
            let permit = jobs.running.clone().acquire_owned().await;
            let result = tokio::task::spawn_blocking(work).await;
            drop(permit);
            // Out of the table first: a request arriving now finds the work's result
            // where the work stored it, or starts a new job if it stored none.
            jobs.lock().remove(&key);
            match result {
                Ok(v) => {
                    let _ = tx.send(Some(v));
                }
                // A panic: dropping `tx` tells the waiters.
                Err(e) => tracing::error!("an on-demand job panicked: {e}"),
            }
        });
        Joined::Started(Ticket { rx })
    }

    /// Jobs queued or running.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, watch::Receiver<Option<V>>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<V: Clone> Ticket<V> {
    /// Waits at most `max` for the job's result.
    pub async fn wait(&mut self, max: Duration) -> Waited<V> {
        match tokio::time::timeout(max, self.rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => match &*v {
                Some(v) => Waited::Done(v.clone()),
                None => Waited::Lost,
            },
            Ok(Err(_)) => Waited::Lost,
            Err(_) => Waited::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const LONG: Duration = Duration::from_secs(20);

    /// A job that blocks until released, counting how many run at once.
    struct Gate {
        open: Mutex<bool>,
        cv: std::sync::Condvar,
        now: AtomicUsize,
        most: AtomicUsize,
        runs: AtomicUsize,
    }

    impl Gate {
        fn new() -> Arc<Gate> {
            Arc::new(Gate {
                open: Mutex::new(false),
                cv: std::sync::Condvar::new(),
                now: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
                runs: AtomicUsize::new(0),
            })
        }

        fn work(self: &Arc<Self>, value: u32) -> impl FnOnce() -> u32 + Send + 'static {
            let g = self.clone();
            move || {
                g.runs.fetch_add(1, Ordering::SeqCst);
                let n = g.now.fetch_add(1, Ordering::SeqCst) + 1;
                g.most.fetch_max(n, Ordering::SeqCst);
                let mut open = g.open.lock().unwrap();
                while !*open {
                    open = g.cv.wait(open).unwrap();
                }
                g.now.fetch_sub(1, Ordering::SeqCst);
                value
            }
        }

        fn release(&self) {
            *self.open.lock().unwrap() = true;
            self.cv.notify_all();
        }
    }

    fn ticket<V>(j: Joined<V>) -> Ticket<V> {
        match j {
            Joined::Started(t) | Joined::Joined(t) => t,
            Joined::Full => panic!("the table is full"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_for_one_key_share_one_job_and_its_result() {
        let jobs: Arc<Jobs<&str, u32>> = Jobs::new(1, 4);
        let gate = Gate::new();
        let first = jobs.join("a", gate.work(7));
        assert!(matches!(first, Joined::Started(_)));
        let mut tickets = vec![ticket(first)];
        for _ in 0..5 {
            let j = jobs.join("a", gate.work(99));
            assert!(matches!(j, Joined::Joined(_)), "a second job for one key");
            tickets.push(ticket(j));
        }
        assert_eq!(jobs.pending(), 1);
        assert_eq!(
            tickets[0].wait(Duration::from_millis(50)).await,
            Waited::Pending
        );
        gate.release();
        for t in &mut tickets {
            assert_eq!(t.wait(LONG).await, Waited::Done(7));
        }
        assert_eq!(gate.runs.load(Ordering::SeqCst), 1);
        // Done: out of the table, so the key may run again (the caller checks first
        // whether the result is stored).
        for _ in 0..100 {
            if jobs.pending() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(jobs.pending(), 0);
        assert!(matches!(jobs.join("a", || 8), Joined::Started(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_limit_nothing_starts_and_only_running_jobs_run_at_once() {
        let jobs: Arc<Jobs<u32, u32>> = Jobs::new(1, 3);
        let gate = Gate::new();
        let mut tickets: Vec<Ticket<u32>> =
            (0..3).map(|k| ticket(jobs.join(k, gate.work(k)))).collect();
        assert!(matches!(jobs.join(3, gate.work(3)), Joined::Full));
        // A pending key is still joined when the table is full.
        assert!(matches!(jobs.join(1, gate.work(1)), Joined::Joined(_)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(gate.runs.load(Ordering::SeqCst), 1, "queued jobs started");
        gate.release();
        for (k, t) in tickets.iter_mut().enumerate() {
            assert_eq!(t.wait(LONG).await, Waited::Done(k as u32));
        }
        assert_eq!(gate.most.load(Ordering::SeqCst), 1, "two jobs ran at once");
        assert_eq!(gate.runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_panics_is_lost_to_its_waiters_and_frees_its_key() {
        let jobs: Arc<Jobs<&str, u32>> = Jobs::new(1, 2);
        let mut t = ticket(jobs.join("p", || panic!("deliberate")));
        assert_eq!(t.wait(LONG).await, Waited::Lost);
        for _ in 0..100 {
            if jobs.pending() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut again = ticket(jobs.join("p", || 5));
        assert_eq!(again.wait(LONG).await, Waited::Done(5));
    }
}
