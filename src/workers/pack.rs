//! How many workers serve clients, and where a session should move: enough
//! workers that none is busier than [`SPREAD`], no more than the load
//! needs. Every worker that runs sleeps and wakes on its own for each
//! burst of work, and on a box whose cores PostgreSQL and the clients also
//! use, those wake-ups are what a split-port transaction costs most
//! (docs/benchmarks.md): one busy worker beats two half-idle ones. Pure.

/// A worker busier than this share of the last period calls for one more.
pub const SPREAD: f64 = 0.75;

/// One worker less is used when the others could carry the load at this
/// share each.
pub const PACK: f64 = 0.5;

/// The number of workers to use next, from each worker's busy share in
/// the last period (`busy[i]` in 0..=1), `active` now and `total` started.
#[must_use]
pub fn wanted(busy: &[f64], active: usize, total: usize) -> usize {
    let active = active.clamp(1, total.max(1));
    let load: f64 = busy.iter().sum();
    let hottest = busy.iter().take(active).copied().fold(0.0, f64::max);
    if hottest > SPREAD && active < total {
        // At least one more; as many as the load asks for at once.
        let need = (load / SPREAD).ceil() as usize;
        return need.clamp(active + 1, total);
    }
    if active > 1 && load <= PACK * (active - 1) as f64 {
        return active - 1;
    }
    active
}

/// The first of workers `0..active` with the fewest clients (`tasks(i)`).
#[must_use]
pub fn least(active: usize, tasks: impl Fn(usize) -> usize) -> Option<usize> {
    (0..active).min_by_key(|&i| (tasks(i), i))
}

/// Where a session idle on worker `at` should move, if anywhere: off a
/// worker past the `active` ones, to the active one with the fewest
/// clients; or, among active ones, from a worker with two or more clients
/// above the least loaded one, to it. `tasks(i)` counts worker `i`'s
/// clients, for `i` below `len`.
#[must_use]
pub fn destination(
    at: usize,
    active: usize,
    len: usize,
    tasks: impl Fn(usize) -> usize,
) -> Option<usize> {
    let active = active.clamp(1, len.max(1));
    let least = least(active.min(len), &tasks)?;
    let fewest = tasks(least);
    if at >= active {
        return Some(least);
    }
    (at < len && tasks(at) > fewest + 1).then_some(least)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_light_load_packs_onto_one_worker() {
        assert_eq!(wanted(&[0.3, 0.2], 2, 2), 1);
        assert_eq!(wanted(&[0.5, 0.0], 1, 2), 1);
        assert_eq!(wanted(&[0.1, 0.1, 0.1, 0.1], 4, 4), 3, "one less at a time");
    }

    #[test]
    fn a_hot_worker_spreads_as_far_as_the_load_needs() {
        assert_eq!(wanted(&[0.9, 0.0], 1, 2), 2);
        assert_eq!(wanted(&[0.99, 0.0, 0.0, 0.0], 1, 4), 2);
        assert_eq!(wanted(&[0.95, 0.9, 0.0, 0.0], 2, 4), 3);
        assert_eq!(wanted(&[1.0, 1.0, 0.9, 0.0], 3, 4), 4);
        assert_eq!(wanted(&[1.0, 1.0], 2, 2), 2, "no more than started");
    }

    #[test]
    fn between_the_marks_nothing_changes() {
        assert_eq!(wanted(&[0.6, 0.5], 2, 2), 2);
        assert_eq!(wanted(&[0.7, 0.0], 1, 2), 1);
        assert_eq!(wanted(&[0.0], 1, 1), 1);
        assert_eq!(wanted(&[], 0, 0), 1);
    }

    fn dest(at: usize, active: usize, tasks: &[usize]) -> Option<usize> {
        destination(at, active, tasks.len(), |i| tasks[i])
    }

    #[test]
    fn sessions_leave_inactive_workers_and_even_out() {
        assert_eq!(dest(1, 1, &[5, 3]), Some(0));
        assert_eq!(dest(2, 2, &[4, 2, 7]), Some(1));
        assert_eq!(dest(0, 2, &[5, 3]), Some(1));
        assert_eq!(dest(0, 2, &[4, 3]), None, "within one");
        assert_eq!(dest(1, 2, &[3, 5]), Some(0));
        assert_eq!(dest(0, 1, &[9, 0]), None, "one active worker");
        assert_eq!(dest(0, 1, &[]), None);
    }
}
