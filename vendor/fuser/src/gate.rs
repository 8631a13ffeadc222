//! The reader token (a decofs addition, see DECOFS-PATCH.md): one worker thread at a
//! time reads `/dev/fuse` and serves what it reads, in a row.
//!
//! With every worker blocked in `read(2)`, the kernel hands each request to the worker
//! that has waited longest (its wait queue is FIFO), so a client that sends one request
//! at a time wakes a sleeping thread per request, often on another CPU. Here the other
//! workers park in user space. The token holder gives the token up when it is about to
//! block ([`yield_reader`], called by the filesystem before a disk read or a sync): to a
//! parked worker at once if a request is already waiting in the device, else it just
//! leaves it free (a client waiting for this very answer sends nothing meanwhile), and
//! takes it back when done if nobody took it. A parked *watcher*, checking every
//! [`STEAL_AFTER`] while requests come, takes a free token, and takes the token over
//! from a request that has held it a whole period: a request that blocks without
//! saying so (a lock, a kernel call that waits for another request) delays the others
//! by one or two periods at most.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Condvar;
use parking_lot::Mutex;

/// A request holding the token this long lets the watcher take the token over.
pub(crate) const STEAL_AFTER: Duration = Duration::from_millis(1);

/// Without a request for this long, the watcher stops checking on a timer and sleeps
/// until the next request starts.
const IDLE_AFTER: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct State {
    /// The worker holding the token (it reads the next request), if any.
    holder: Option<usize>,
    /// The holder is serving a request (not reading); false while nobody holds it.
    serving: bool,
    /// Requests taken so far.
    seq: u64,
    last_start: Option<Instant>,
    watcher: bool,
    /// The watcher sleeps without a timeout: the next request start rings it.
    watcher_untimed: bool,
    /// Parked workers, the most recently parked last: the next one woken is the one
    /// whose stack and caches are warmest.
    parked: Vec<usize>,
    /// A parked worker was told to get up (set by the waker, cleared by the worker).
    called: Vec<bool>,
    closed: bool,
    /// Counters (for tests and diagnostics): yields that woke a worker, yields that
    /// left the token free, takeovers by the watcher.
    handovers: u64,
    lazy: u64,
    /// Request starts that found more requests waiting and woke a reader for them.
    spread: u64,
    steals: u64,
}

/// Shared by the workers of one session.
#[derive(Debug)]
pub(crate) struct Gate {
    s: Mutex<State>,
    /// The device, polled for a waiting request when the holder yields (None: always
    /// hand over at once).
    device: Option<RawFd>,
    /// One per worker, for waking a chosen parked worker.
    park: Vec<Condvar>,
    /// The watcher.
    watch: Condvar,
}

thread_local! {
    /// The gate and index of the worker running on this thread, if it is one.
    static WORKER: std::cell::RefCell<Option<(Arc<Gate>, usize)>> = const { std::cell::RefCell::new(None) };
    /// This worker may hold the token (checked under the lock before acting on it).
    static MAYBE_HOLDER: Cell<bool> = const { Cell::new(false) };
}

/// Tell the session that this thread is about to block (a disk read, a sync): if it
/// holds the reader token, another worker takes it and reads the next request. Costs
/// nothing on a thread that is not a session worker or does not hold the token.
pub fn yield_reader() {
    if !MAYBE_HOLDER.with(|m| m.get()) {
        return;
    }
    MAYBE_HOLDER.with(|m| m.set(false));
    WORKER.with(|w| {
        if let Some((gate, me)) = w.borrow().as_ref() {
            gate.release(*me);
        }
    });
}

impl Gate {
    /// A gate for workers `0..n`.
    pub(crate) fn new(n: usize, device: Option<RawFd>) -> Gate {
        Gate {
            device,
            s: Mutex::new(State {
                called: vec![false; n],
                ..State::default()
            }),
            park: (0..n).map(|_| Condvar::new()).collect(),
            watch: Condvar::new(),
        }
    }

    /// Wake the most recently parked worker, if any; false if none is parked.
    fn call_parked(&self, s: &mut State) -> bool {
        match s.parked.pop() {
            Some(w) => {
                s.called[w] = true;
                self.park[w].notify_one();
                true
            }
            None => false,
        }
    }

    /// Someone must read the device: the most recently parked worker, or else the
    /// watcher.
    fn wake_reader(&self, s: &mut State) {
        if !self.call_parked(s) {
            self.watch.notify_one();
        }
    }

    /// Bind this thread to the gate as worker `me`.
    pub(crate) fn enter(self: &Arc<Self>, me: usize) {
        WORKER.with(|w| *w.borrow_mut() = Some((self.clone(), me)));
    }

    /// Wait until this worker holds the token; false once the session is closed.
    pub(crate) fn acquire(&self, me: usize) -> bool {
        let mut s = self.s.lock();
        loop {
            if s.closed {
                return false;
            }
            if s.holder.is_none() || s.holder == Some(me) {
                s.holder = Some(me);
                s.serving = false;
                MAYBE_HOLDER.with(|m| m.set(true));
                return true;
            }
            if !s.watcher {
                s.watcher = true;
                let seen = s.seq;
                let busy_then = s.serving;
                let recent = s.last_start.is_some_and(|t| t.elapsed() < IDLE_AFTER);
                let timed_out = if recent {
                    self.watch.wait_for(&mut s, STEAL_AFTER).timed_out()
                } else {
                    s.watcher_untimed = true;
                    self.watch.wait(&mut s);
                    s.watcher_untimed = false;
                    false
                };
                s.watcher = false;
                if s.closed {
                    return false;
                }
                if s.holder.is_none() {
                    continue;
                }
                if timed_out && busy_then && s.serving && s.seq == seen {
                    // One request has held the token for a whole period: read beside it,
                    // and let a parked worker become the watcher.
                    s.holder = Some(me);
                    s.serving = false;
                    s.steals += 1;
                    MAYBE_HOLDER.with(|m| m.set(true));
                    self.call_parked(&mut s);
                    return true;
                }
                continue;
            }
            s.parked.push(me);
            s.called[me] = false;
            while !s.called[me] && !s.closed {
                self.park[me].wait(&mut s);
            }
            s.called[me] = false;
            // Closed: leave the stack as it is; nobody is called any more.
        }
    }

    /// The holder `me` took a request off the device and serves it now. If more are
    /// waiting (several clients, or an asynchronous release behind a serial client's
    /// next request), a parked worker is woken to read them meanwhile.
    pub(crate) fn start(&self, me: usize) {
        {
            let mut s = self.s.lock();
            s.serving = true;
            s.seq += 1;
            s.last_start = Some(Instant::now());
            if s.watcher_untimed {
                self.watch.notify_one();
            }
        }
        if self.device.is_some() && self.request_waiting() {
            let mut s = self.s.lock();
            if s.holder == Some(me) {
                s.holder = None;
                s.serving = false;
                s.spread += 1;
                MAYBE_HOLDER.with(|m| m.set(false));
                self.wake_reader(&mut s);
            }
        }
    }

    /// A request served by `me` is answered. True if `me` still holds the token (it
    /// reads the next request without waiting).
    pub(crate) fn finish(&self, me: usize) -> bool {
        let mut s = self.s.lock();
        if s.holder == Some(me) {
            s.serving = false;
            true
        } else if s.holder.is_none() && !s.closed {
            // It yielded and nobody needed the token meanwhile.
            s.holder = Some(me);
            s.serving = false;
            MAYBE_HOLDER.with(|m| m.set(true));
            true
        } else {
            MAYBE_HOLDER.with(|m| m.set(false));
            false
        }
    }

    /// `me` is about to block: give the token up, waking a reader if a request waits.
    fn release(&self, me: usize) {
        // Asked before the lock: the watcher need not wait for a system call.
        let waiting = self.request_waiting();
        let mut s = self.s.lock();
        if s.holder != Some(me) {
            return;
        }
        s.holder = None;
        s.serving = false;
        if !waiting {
            // Free: taken back when this request is answered, or by the watcher.
            s.lazy += 1;
            return;
        }
        s.handovers += 1;
        self.wake_reader(&mut s);
    }

    /// Is a request waiting to be read? (Without a device to ask: assume so.)
    fn request_waiting(&self) -> bool {
        let Some(fd) = self.device else {
            return true;
        };
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on the session's device, which outlives its workers.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n != 0 // an error too: hand over rather than risk a wait
    }

    /// The session ends: every worker returns.
    pub(crate) fn close(&self) {
        let mut s = self.s.lock();
        s.closed = true;
        s.holder = None;
        for c in &self.park {
            c.notify_all();
        }
        self.watch.notify_all();
    }

    /// (handovers, steals) so far.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> (u64, u64) {
        let s = self.s.lock();
        (s.handovers, s.steals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A fake device: requests are closures a worker takes in order and runs.
    type Job = Box<dyn FnOnce() + Send>;

    fn run_workers(n: usize, jobs: Vec<Job>) -> Arc<Gate> {
        run_workers_on(n, jobs, None)
    }

    fn run_workers_on(n: usize, jobs: Vec<Job>, device: Option<RawFd>) -> Arc<Gate> {
        let gate = Arc::new(Gate::new(n, device));
        let queue = Arc::new(Mutex::new(
            jobs.into_iter().collect::<std::collections::VecDeque<_>>(),
        ));
        let mut threads = Vec::new();
        for me in 0..n {
            let gate = gate.clone();
            let queue = queue.clone();
            threads.push(std::thread::spawn(move || {
                gate.enter(me);
                let mut holding = false;
                loop {
                    if !holding && !gate.acquire(me) {
                        return;
                    }
                    let job = queue.lock().pop_front();
                    let Some(job) = job else {
                        gate.close();
                        return;
                    };
                    gate.start(me);
                    job();
                    holding = gate.finish(me);
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        gate
    }

    /// Serial cheap requests are all served by the holder: no handover, no steal.
    #[test]
    fn cheap_requests_stay_with_one_worker() {
        let (tx, rx) = mpsc::channel();
        let jobs: Vec<Job> = (0..1000)
            .map(|_| {
                let tx = tx.clone();
                Box::new(move || {
                    tx.send(std::thread::current().id()).unwrap();
                }) as Job
            })
            .collect();
        let gate = run_workers(4, jobs);
        drop(tx);
        let order: Vec<_> = rx.iter().collect();
        assert_eq!(order.len(), 1000);
        let (handovers, steals) = gate.counts();
        assert_eq!(handovers, 0);
        // The serving worker changes only where the token was taken over (a worker
        // preempted while serving can hold it for STEAL_AFTER): never per request.
        let changes = order.windows(2).filter(|w| w[0] != w[1]).count() as u64;
        assert!(
            changes <= steals,
            "the serving worker changed {changes} times with {steals} steal(s)"
        );
    }

    /// A request that blocks after yielding lets the next request run beside it.
    #[test]
    fn a_yielding_request_lets_the_next_one_in() {
        let (tx, rx) = mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(Some(rx)));
        let jobs: Vec<Job> = vec![
            Box::new(move || {
                yield_reader();
                // Blocks until the next request runs: only another worker can run it.
                let rx = rx.lock().take().unwrap();
                rx.recv().unwrap();
            }),
            Box::new(move || tx.send(()).unwrap()),
        ];
        let gate = run_workers(2, jobs);
        assert_eq!(gate.counts().0, 1);
    }

    /// A request that yields while no request waits in the device leaves the token
    /// free; when it then blocks until the next request is served, the watcher takes
    /// the free token (no deadlock), and nobody was woken at the yield.
    #[test]
    fn a_lazy_yield_is_picked_up_by_the_watcher() {
        // An empty pipe: polled, it never has a request waiting.
        let mut fds = [0; 2];
        // SAFETY: pipe(2) into a local array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (tx, rx) = mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(Some(rx)));
        let jobs: Vec<Job> = vec![
            Box::new(move || {
                yield_reader();
                let rx = rx.lock().take().unwrap();
                rx.recv().unwrap();
            }),
            Box::new(move || tx.send(()).unwrap()),
        ];
        let gate = run_workers_on(3, jobs, Some(fds[0]));
        let s = gate.s.lock();
        assert_eq!((s.handovers, s.lazy), (0, 1));
        drop(s);
        // SAFETY: closing the pipe made above.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    /// With requests waiting in the device at every start (a pipe holding a byte), each
    /// start wakes a reader for them, and every job still runs exactly once.
    #[test]
    fn a_start_with_requests_waiting_wakes_a_reader() {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) into a local array, then one byte into it.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            assert_eq!(libc::write(fds[1], b"x".as_ptr().cast(), 1), 1);
        }
        let (tx, rx) = mpsc::channel();
        let jobs: Vec<Job> = (0..200u32)
            .map(|i| {
                let tx = tx.clone();
                Box::new(move || tx.send(i).unwrap()) as Job
            })
            .collect();
        let gate = run_workers_on(4, jobs, Some(fds[0]));
        drop(tx);
        let mut got: Vec<u32> = rx.iter().collect();
        got.sort_unstable();
        assert_eq!(got, (0..200).collect::<Vec<_>>());
        assert!(gate.s.lock().spread >= 1);
        // SAFETY: closing the pipe made above.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    /// A request that blocks without yielding (waiting for the next request, as a
    /// kernel call may wait for a request in flight) is stolen from, not deadlocked.
    #[test]
    fn a_silent_blocking_request_is_stolen_from() {
        let (tx, rx) = mpsc::channel::<()>();
        let jobs: Vec<Job> = vec![
            Box::new(move || rx.recv().unwrap()),
            Box::new(move || tx.send(()).unwrap()),
        ];
        let gate = run_workers(3, jobs);
        assert!(gate.counts().1 >= 1);
    }
}
