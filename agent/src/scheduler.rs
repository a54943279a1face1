//! Admission and batching: how requests wait for, and share, a model.
//!
//! Each model has a concurrency limit and a bounded queue. A request that finds every slot
//! busy and the queue full is refused at once (RESOURCE_EXHAUSTED with a retry hint); the
//! queue never holds more than its bound. Embed and classify requests that are admitted
//! together are merged into one ONNX Runtime run by the model's batcher.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::config::BatchingConfig;
use crate::engine::EngineError;
use crate::engine::encoder::Encoder;
use crate::error::AgentError;
use crate::stats::ModelStats;

/// A model's concurrency limit and bounded queue.
pub struct Admission {
    slots: Arc<Semaphore>,
    max_concurrency: AtomicU32,
    max_queue: AtomicU32,
}

/// Held while a request runs; frees its slot when dropped.
pub struct SlotGuard {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ModelStats>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a request as queued for as long as it waits (also if its caller goes away).
struct QueuedGuard<'a>(&'a ModelStats);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    pub fn new(max_concurrency: u32, max_queue: u32) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrency as usize)),
            max_concurrency: AtomicU32::new(max_concurrency),
            max_queue: AtomicU32::new(max_queue),
        }
    }

    pub fn max_concurrency(&self) -> u32 {
        self.max_concurrency.load(Ordering::SeqCst)
    }

    pub fn max_queue(&self) -> u32 {
        self.max_queue.load(Ordering::SeqCst)
    }

    /// New limits while serving. More slots open at once; fewer close as running requests
    /// finish (nothing running is interrupted). The queue bound applies to the next arrival.
    pub fn resize(&self, max_concurrency: u32, max_queue: u32) {
        self.max_queue.store(max_queue, Ordering::SeqCst);
        let old = self.max_concurrency.swap(max_concurrency, Ordering::SeqCst);
        if max_concurrency > old {
            self.slots.add_permits((max_concurrency - old) as usize);
        } else if max_concurrency < old {
            let slots = self.slots.clone();
            tokio::spawn(async move {
                if let Ok(p) = slots.acquire_many_owned(old - max_concurrency).await {
                    p.forget();
                }
            });
        }
    }

    /// Takes a slot now, or waits in the queue until `deadline`, or refuses when the queue is full.
    pub async fn enter(
        &self,
        model: &str,
        stats: &Arc<ModelStats>,
        deadline: Option<Instant>,
    ) -> Result<SlotGuard, AgentError> {
        let admitted = |permit| {
            stats.in_flight.fetch_add(1, Ordering::SeqCst);
            SlotGuard {
                _permit: permit,
                stats: stats.clone(),
            }
        };
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(admitted(p));
        }
        // join the queue only while it has room (compare-and-swap: the bound is never exceeded)
        let mut queued = stats.queued.load(Ordering::SeqCst);
        loop {
            if queued >= self.max_queue() {
                stats.rejected_total.fetch_add(1, Ordering::Relaxed);
                return Err(AgentError::Overloaded {
                    model: model.to_string(),
                    in_flight: stats.in_flight.load(Ordering::SeqCst),
                    queued,
                    max_queue: self.max_queue(),
                    retry_after: self.retry_hint(stats, queued),
                });
            }
            match stats.queued.compare_exchange(
                queued,
                queued + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => queued = now,
            }
        }
        stats
            .queue_high_water
            .fetch_max(queued + 1, Ordering::SeqCst);
        let waiting = QueuedGuard(stats);
        let acquire = self.slots.clone().acquire_owned();
        let permit = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), acquire).await {
                Ok(p) => p,
                Err(_) => {
                    return Err(AgentError::DeadlineExceeded(format!(
                        "while queued for model `{model}`"
                    )));
                }
            },
            None => acquire.await,
        };
        drop(waiting);
        permit.map(admitted).map_err(|_| AgentError::Draining)
    }

    /// Roughly when a slot frees up: the average request time scaled by the queue ahead.
    fn retry_hint(&self, stats: &ModelStats, queued: u32) -> Duration {
        let per_request = stats.ewma_latency_ms().max(10.0);
        let ms = per_request * f64::from(queued + 1) / f64::from(self.max_concurrency().max(1));
        Duration::from_millis(ms.clamp(50.0, 30_000.0) as u64)
    }

    /// Stops admitting: queued and future requests get `Draining`.
    pub fn close(&self) {
        self.slots.close();
    }
}

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, EngineError>>;

struct Job {
    ids: Vec<Vec<u32>>,
    reply: Reply,
}

/// Merges concurrent encoder requests into shared ONNX Runtime runs.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts the batching task for `encoder`. Admission bounds what reaches it.
    pub fn start(
        encoder: Arc<dyn EncoderRun>,
        cfg: BatchingConfig,
        stats: Arc<ModelStats>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(encoder, rx, cfg, stats));
        Self { tx }
    }

    pub async fn run(&self, ids: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { ids, reply })
            .map_err(|_| EngineError("the model's batcher has stopped".into()))?;
        rx.await
            .map_err(|_| EngineError("the model's batcher dropped the request".into()))?
    }
}

/// What the batcher needs of an encoder (a trait so batching is testable on its own).
pub trait EncoderRun: Send + Sync + 'static {
    fn run_batch(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError>;
}

impl EncoderRun for Encoder {
    fn run_batch(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.run(batch)
    }
}

async fn batch_loop(
    encoder: Arc<dyn EncoderRun>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    cfg: BatchingConfig,
    stats: Arc<ModelStats>,
) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let mut texts = first.ids.len();
        let mut jobs = vec![first];
        let until = tokio::time::Instant::now() + cfg.max_delay;
        while texts < cfg.max_batch_size {
            // Wait for company only while admitted requests are still on their way here
            // (tokenizing): a lone request runs at once instead of paying the delay.
            let expecting = stats.in_flight.load(Ordering::SeqCst) as usize > jobs.len();
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(_) if cfg.max_delay.is_zero() || !expecting => None,
                Err(_) => tokio::time::timeout_at(until, rx.recv())
                    .await
                    .ok()
                    .flatten(),
            };
            let Some(job) = next else { break };
            if texts + job.ids.len() > cfg.max_batch_size {
                carry = Some(job); // starts the next batch
                break;
            }
            texts += job.ids.len();
            jobs.push(job);
        }
        let batch: Vec<Vec<u32>> = jobs.iter().flat_map(|j| j.ids.iter().cloned()).collect();
        let enc = encoder.clone();
        stats.batches_total.fetch_add(1, Ordering::Relaxed);
        let result = tokio::task::spawn_blocking(move || enc.run_batch(&batch))
            .await
            .unwrap_or_else(|e| Err(EngineError(format!("inference task failed: {e}"))));
        match result {
            Ok(mut rows) => {
                for job in jobs {
                    let rest = rows.split_off(job.ids.len().min(rows.len()));
                    let _ = job.reply.send(Ok(std::mem::replace(&mut rows, rest)));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(EngineError(e.0.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl EncoderRun for Echo {
        fn run_batch(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EngineError> {
            Ok(batch
                .iter()
                .map(|ids| vec![ids.len() as f32, batch.len() as f32])
                .collect())
        }
    }

    #[tokio::test]
    async fn queue_is_bounded_and_refusal_is_immediate() {
        let stats = Arc::new(ModelStats::default());
        let adm = Arc::new(Admission::new(1, 2));
        let held = adm.enter("m", &stats, None).await;
        assert!(held.is_ok());
        let mut waiters = Vec::new();
        for _ in 0..2 {
            let (a, s) = (adm.clone(), stats.clone());
            waiters.push(tokio::spawn(async move {
                a.enter("m", &s, None).await.map(|_| ())
            }));
        }
        while stats.queued.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        let refused = adm.enter("m", &stats, None).await;
        assert!(matches!(
            refused,
            Err(AgentError::Overloaded {
                queued: 2,
                max_queue: 2,
                ..
            })
        ));
        assert_eq!(stats.rejected_total.load(Ordering::SeqCst), 1);
        drop(held);
        for w in waiters {
            assert!(matches!(w.await, Ok(Ok(()))));
        }
        assert_eq!(stats.queue_high_water.load(Ordering::SeqCst), 2);
        assert_eq!(stats.in_flight.load(Ordering::SeqCst), 0);
        assert_eq!(stats.queued.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_queued_request_gives_up_at_its_deadline() {
        let stats = Arc::new(ModelStats::default());
        let adm = Admission::new(1, 4);
        let _held = adm.enter("m", &stats, None).await;
        let r = adm
            .enter(
                "m",
                &stats,
                Some(Instant::now() + Duration::from_millis(20)),
            )
            .await;
        assert!(matches!(r, Err(AgentError::DeadlineExceeded(_))));
        assert_eq!(stats.queued.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn concurrent_jobs_share_one_run_and_get_their_own_rows() {
        let stats = Arc::new(ModelStats::default());
        let cfg = BatchingConfig {
            max_batch_size: 8,
            max_delay: Duration::from_secs(5),
        };
        stats.in_flight.store(2, Ordering::SeqCst); // both admitted
        let b = Batcher::start(Arc::new(Echo), cfg, stats.clone());
        // 3 + 5 texts fill the batch of 8 exactly, so the run starts without waiting for the delay
        let (r1, r2) = tokio::join!(b.run(vec![vec![1]; 3]), b.run(vec![vec![1, 2]; 5]));
        let (r1, r2) = (r1.unwrap_or_default(), r2.unwrap_or_default());
        assert_eq!(r1, vec![vec![1.0, 8.0]; 3]);
        assert_eq!(r2, vec![vec![2.0, 8.0]; 5]);
        assert_eq!(stats.batches_total.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_lone_request_does_not_wait_for_company() {
        let stats = Arc::new(ModelStats::default());
        let cfg = BatchingConfig {
            max_batch_size: 8,
            max_delay: Duration::from_secs(60),
        };
        stats.in_flight.store(1, Ordering::SeqCst); // only this one admitted
        let b = Batcher::start(Arc::new(Echo), cfg, stats.clone());
        let r = tokio::time::timeout(Duration::from_secs(10), b.run(vec![vec![1]])).await;
        assert!(
            matches!(r, Ok(Ok(ref rows)) if rows == &vec![vec![1.0, 1.0]]),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn an_admitted_request_on_its_way_joins_the_batch() {
        let stats = Arc::new(ModelStats::default());
        let cfg = BatchingConfig {
            max_batch_size: 8,
            max_delay: Duration::from_secs(60),
        };
        stats.in_flight.store(2, Ordering::SeqCst);
        let b = Batcher::start(Arc::new(Echo), cfg, stats.clone());
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.run(vec![vec![1]]).await }
        });
        // the second arrives later (still tokenizing when the first got to the batcher):
        // on this single-threaded runtime, yielding lets the batcher take the first and wait
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let second = b.run(vec![vec![1, 2]]).await;
        let first = first.await.ok().and_then(Result::ok);
        assert_eq!(first, Some(vec![vec![1.0, 2.0]]));
        assert_eq!(second.ok(), Some(vec![vec![2.0, 2.0]]));
        assert_eq!(stats.batches_total.load(Ordering::SeqCst), 1);
    }
}
