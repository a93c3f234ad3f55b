//! One session's metric handles, resolved once per label set and kept, so
//! counting a statement costs no label lookup in the shared registry.

use super::SessionContext;
use crate::router::split::{NodeRole, Why};

/// Metric handles a session uses.
pub(super) struct SessionMetrics {
    /// (node, role, reason) → `pgvane_statements_routed_total`.
    statements: Vec<((String, &'static str, &'static str), prometheus::IntCounter)>,
    /// (target, why) → `pgvane_ryw_reads_total`.
    reads: Vec<((NodeRole, Why), prometheus::IntCounter)>,
    /// `pgvane_pool_acquire_seconds` for this port.
    pub(super) acquire_wait: prometheus::Histogram,
    /// `pgvane_ryw_wait_seconds` for this port.
    pub(super) ryw_wait: prometheus::Histogram,
    /// `pgvane_request_duration_seconds` for this port.
    request: prometheus::Histogram,
    /// `pgvane_transaction_duration_seconds` for this port.
    transaction: prometheus::Histogram,
}

/// When a session's current request and transaction block began.
#[derive(Debug, Default)]
pub(super) struct Timing {
    /// The current request's first message.
    pub(super) request: Option<std::time::Instant>,
    /// The first request of the open transaction block.
    transaction: Option<std::time::Instant>,
}

impl SessionMetrics {
    /// Handles for `ctx`'s port.
    pub(super) fn new(ctx: &SessionContext) -> Self {
        let labels = [ctx.key.cluster.as_str(), ctx.key.port.as_str()];
        Self {
            statements: Vec::new(),
            reads: Vec::new(),
            acquire_wait: ctx.metrics.acquire_wait.with_label_values(&labels),
            ryw_wait: ctx.metrics.ryw_wait.with_label_values(&labels),
            request: ctx.metrics.request_duration.with_label_values(&labels),
            transaction: ctx.metrics.transaction_duration.with_label_values(&labels),
        }
    }

    /// A ReadyForQuery with `status` reached the client: the request it
    /// ends is timed, and a transaction block that began (the session
    /// was idle) or ended (`I` again) is too.
    pub(super) fn ready(&self, timing: &mut Timing, was_idle: bool, status: u8) {
        let now = std::time::Instant::now();
        let began = timing.request.take();
        if let Some(b) = began {
            self.request.observe(now.duration_since(b).as_secs_f64());
        }
        // Transactions follow the statuses whether or not the request was
        // timed (a pipeline's later ReadyForQuery messages are not).
        match (status, timing.transaction) {
            (b'I', Some(t)) => {
                self.transaction
                    .observe(now.duration_since(t).as_secs_f64());
                timing.transaction = None;
            }
            (b'T' | b'E', None) if was_idle => timing.transaction = Some(began.unwrap_or(now)),
            _ => {}
        }
    }

    /// Counts a backend acquisition for a statement.
    pub(super) fn statement(
        &mut self,
        ctx: &SessionContext,
        node: &str,
        role: NodeRole,
        reason: &'static str,
    ) {
        let role = role.label();
        if let Some((_, c)) = self
            .statements
            .iter()
            .find(|((n, ro, re), _)| n == node && *ro == role && *re == reason)
        {
            c.inc();
            return;
        }
        let c = ctx.metrics.statements.with_label_values(&[
            &ctx.key.cluster,
            &ctx.key.port,
            node,
            role,
            reason,
        ]);
        c.inc();
        if self.statements.capacity() == 0 {
            // Most sessions only ever use one node: room for one, not
            // the four a first push reserves (idle memory per client).
            self.statements.reserve_exact(1);
        }
        self.statements.push(((node.to_owned(), role, reason), c));
    }

    /// Counts a read by where it ran and why (`waited` when a replica
    /// replayed its floor after a wait).
    pub(super) fn read(&mut self, ctx: &SessionContext, role: NodeRole, why: Why, waited: bool) {
        if let Some((_, c)) = self.reads.iter().find(|(k, _)| *k == (role, why)) {
            if !(waited && why == Why::Replayed) {
                c.inc();
                return;
            }
        }
        let reason = if waited && why == Why::Replayed {
            "waited"
        } else {
            why.label()
        };
        let c = ctx.metrics.ryw_reads.with_label_values(&[
            &ctx.key.cluster,
            &ctx.key.port,
            role.label(),
            reason,
        ]);
        c.inc();
        if reason == why.label() {
            self.reads.push(((role, why), c));
        }
    }
}
