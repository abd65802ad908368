//! The threads that serve requests. An idle worker takes the next request;
//! a new thread starts only when none is idle, and a worker that finds
//! enough others idle ends. Creating a thread is among the dearest things
//! the agent does under emulation; and after a snapshot restore the pool's
//! workers are already there.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

/// A job does its work and returns what is left to do once its worker
/// counts as idle again (sending the reply): so a request that the reply
/// prompts finds the worker idle instead of starting a new thread.
type Job = Box<dyn FnOnce() -> Finish + Send>;
pub type Finish = Box<dyn FnOnce() + Send>;

/// Idle workers kept for the next burst of requests.
const MAX_IDLE: usize = 8;

struct Pool {
    jobs: Mutex<Sender<Job>>,
    queue: Arc<Mutex<Receiver<Job>>>,
    /// Workers waiting for a job that no job has been sent to yet.
    idle: Mutex<usize>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = channel();
        Pool { jobs: Mutex::new(tx), queue: Arc::new(Mutex::new(rx)), idle: Mutex::new(0) }
    })
}

/// Runs `job` on a worker: an idle one if there is one, else a new thread.
/// Never waits for a busy worker, so a request can never wait behind one
/// that blocks.
pub fn run(job: impl FnOnce() -> Finish + Send + 'static) {
    let pool = pool();
    let mut idle = pool.idle.lock().unwrap();
    if *idle > 0 {
        // That worker is (or is about to be) waiting on the queue: the job
        // is its, and no other job can take its place.
        *idle -= 1;
        let _ = pool.jobs.lock().unwrap().send(Box::new(job));
        return;
    }
    drop(idle);
    let job: Job = Box::new(job);
    std::thread::spawn(move || work(pool, job));
}

/// A worker's life: run a job, go idle, finish the job, wait for the next;
/// end instead when enough others are idle.
fn work(pool: &'static Pool, mut job: Job) {
    loop {
        let finish = job();
        let stay = {
            let mut idle = pool.idle.lock().unwrap();
            let stay = *idle < MAX_IDLE;
            if stay {
                *idle += 1;
            }
            stay
        };
        finish();
        if !stay {
            return;
        }
        match pool.queue.lock().unwrap().recv() {
            Ok(next) => job = next,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    #[test]
    fn a_blocked_job_never_delays_the_next_and_workers_are_reused() {
        let (gate_tx, gate_rx) = channel::<()>();
        let (done_tx, done_rx) = channel::<&'static str>();
        let d1 = done_tx.clone();
        run(move || {
            gate_rx.recv().unwrap(); // blocks until the second job ran
            Box::new(move || d1.send("first").unwrap())
        });
        let d2 = done_tx.clone();
        run(move || {
            gate_tx.send(()).unwrap();
            Box::new(move || d2.send("second").unwrap())
        });
        let mut got = [
            done_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            done_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        ];
        got.sort();
        assert_eq!(got, ["first", "second"]);
        // Both workers go idle; back-to-back jobs, each sent as soon as the
        // previous one finished, run on them: at most two threads serve all.
        std::thread::sleep(Duration::from_millis(50));
        let (id_tx, id_rx) = channel();
        let mut threads = std::collections::HashSet::new();
        for _ in 0..50 {
            let t = id_tx.clone();
            run(move || {
                let id = std::thread::current().id();
                Box::new(move || t.send(id).unwrap())
            });
            threads.insert(id_rx.recv_timeout(Duration::from_secs(5)).unwrap());
        }
        assert!(threads.len() <= 2, "{} threads served 50 back-to-back jobs", threads.len());
    }
}
