"""A compiled plan's thread count at run time: a small plan measures 1 thread against all over its
own runs (`ThreadTrial`), again now and then, and drops to one thread when its parallel runs stall
(`ThreadChoice`). TVM's pool splits each parallel loop statically: a kernel waits at its barrier
for a worker the OS has descheduled, where onnxruntime's caller runs the work a worker has not
started, so on a busy host a small plan's parallel kernels can lose more than they gain.
"""
from __future__ import annotations

import time

import numpy as np

# a plan whose second run takes less CPU time (this thread's) picks its thread count by measurement
# over its next runs (ThreadTrial, 16-40 of them); larger plans keep every thread unless they stall
PICK_BELOW_S = 0.02
# ... and picks again REPICK_FIRST runs after a pick ends, then after longer gaps (REPICK_GROWTH), up to
# REPICK_MAX: the conditions of one moment stay the model's for good otherwise. Another runtime's
# pool spins on for 20-50 ms after its run and takes a core: digits_cnn's pick right after two
# onnxruntime runs (2 threads) measured 2 threads 1.17-1.59x slower than 1 and took 1 in 12 of 12
# tries (load 10), after a 100 ms pause 0.73-1.06x and took 2 in 4 of 6 (after 2-20 ms still
# 1.07-1.52x). A benchmark's second run (and an application's) is often just after such a run,
# where its later picks, amid runs of its own, see the conditions its runs mostly meet
REPICK_FIRST, REPICK_MAX = 8, 8192
# ... a pick that chose as the one before it waits REPICK_GROWTH x the last gap for the next (the
# conditions hold; the trials' slow-side runs are their cost: with gaps doubling, 100 of the detector's
# first 300 runs were on its slower side, 1.8x, and bench_tvm's median of 21 timed runs after warm_up
# fell on them: 1.80x of onnxruntime, 1.04x with the pick off); one that chose otherwise starts over
# at REPICK_FIRST
REPICK_GROWTH = 4
# a trial is over after its second round or any later one where each side's blocks all lie on one
# side of the other's and their means differ by CLEAR_RATIO or more (16 runs instead of 40 where the
# choice is plain, as on a quiet host for the detector, 5.2 ms against 2.9 ms)
CLEAR_RATIO = 1.2
# ... and between picks a plan on all threads watches its runs' wall time: STALLS runs in a row
# slower than STALL_RATIO x the pick's one-thread mean (a parallel kernel waited at its barrier for
# a descheduled worker) put it on one thread, and it picks again at most REPICK_FIRST runs later
# (digits_cnn, each run between onnxruntime runs, 2 threads, load 3.4-4.4: runs past twice
# onnxruntime's median 36-43% -> 10-14%; README)
STALL_RATIO, STALLS = 2.0, 2
# ... where a run that starts this long after the last watched one ended is not judged: the pool's
# workers have stopped spinning (~2 ms, target.POOL_SPIN_COUNT) and sleep, and waking them (and
# their idle vCPU) is what the run pays: the int8 digits CNN's first run after a pause took
# 0.34-0.50 ms against 0.14 ms after it, so every block after idle in bench_tvm_int8 looked stalled
# (2x the one-thread mean) and two such in a row dropped a 2-thread plan to one thread
IDLE_GAP_S = 0.005
# a large plan never picks (a trial's one-thread runs would cost too much): its third run goes on
# one thread for a reference, and from then on STALLS runs in a row on all threads slower than
# LARGE_STALL x that reference (parallel slower than one thread: workers waited for) put it on one
# thread, whose runs keep the reference current; a probe run on all threads REPICK_FIRST runs
# later (twice as many after each probe that stalls too, up to REPICK_MAX) takes it back. Light
# ResNet-50 beside one busy process (2 cores): 180-188 ms per run on 2 threads, 50.6 on one
# (28.3 ms quiet on 2); its own best run is no reference there, loaded from the first run on
LARGE_STALL = 1.1


class ThreadTrial:
    """The faster of 1 and ``most`` threads for a plan, measured over its next runs: each run of
    the trial is one of the plan's real runs, made on the side the trial asks for and timed (wall
    clock) with `record`, in blocks of ``per_round`` + 1 runs per side, ``rounds`` rounds, every
    other round in reverse order; the first run of a block wakes or settles the pool and is not
    counted. A small plan's parallel kernels can lose more to waking the pool and waiting at its
    barrier than they gain: on a busy machine always (a descheduled worker stalls every parallel
    kernel), on a quiet one for the smallest models. Before, the pick made all its 16-40 runs inside
    one call: digits_cnn's runs 2, 10, 26, 58 and 122 each took 42-56x a run (2 threads, load 2-4),
    and its first 130 runs 343 runs' time."""

    def __init__(self, most: int, rounds: int = 5, per_round: int = 3):
        self.most = most
        self.steps = []  # (threads, counted, last run of a round after the first)
        for r in range(rounds):
            for k, n in enumerate((1, most) if r % 2 == 0 else (most, 1)):
                self.steps += [(n, i > 0, r > 0 and k == 1 and i == per_round) for i in range(per_round + 1)]
        self.i = 0
        self.times: dict[int, list] = {1: [], most: []}
        self.per_round = per_round

    @property
    def threads(self) -> int:
        """The threads the next run of the trial is to use."""
        return self.steps[self.i][0]

    def record(self, seconds: float) -> bool:
        """The run just made on `threads` took ``seconds``; whether the trial is over."""
        n, counted, check = self.steps[self.i]
        if counted:
            self.times[n].append(seconds)
        self.i += 1
        if check and self.clear():  # the slow side's runs are the trial's cost
            return True
        return self.i == len(self.steps)

    def clear(self) -> bool:
        """Whether the runs so far already decide: one side 3x slower (a busy machine), or CLEAR_RATIO
        slower in every block (each block's mean beyond all of the other side's)."""
        m1, mm = float(np.mean(self.times[1])), float(np.mean(self.times[self.most]))
        slow, fast = (1, self.most) if m1 > mm else (self.most, 1)
        if max(m1, mm) > 3 * min(m1, mm):
            return True
        blocks = {n: np.asarray(v).reshape(-1, self.per_round).mean(axis=1) for n, v in self.times.items()}
        return max(m1, mm) >= CLEAR_RATIO * min(m1, mm) and blocks[slow].min() > blocks[fast].max()

    def choice(self) -> tuple[int, dict]:
        """(threads, {threads: mean ms}): means, not medians, since a parallel run stalled by a
        descheduled worker is what the choice is about."""
        means = {n: float(np.mean(v)) * 1e3 for n, v in self.times.items()}
        return (1 if means[1] <= means[self.most] else self.most), means


class ThreadChoice:
    """The thread count a plan's runs use (``threads``), and when it is measured: ``runs`` counts
    the runs (None: never picks: one thread, a large plan, or picking turned off), the run
    ``next_pick`` starts a pick whose `ThreadTrial` (``trial``) takes the runs after it; ``times``
    holds the last pick's means (ms); ``stall_s``: the wall time past which a run on all threads
    counts as stalled (None: not watched); ``large``: a large plan's own watch (`_large_run`)."""

    def __init__(self, most: int, picks: bool):
        self.most = self.threads = most
        self.times: dict = {}
        self.runs = 0 if most > 1 and picks else None
        self.next_pick, self.gap = 2, REPICK_FIRST
        self.trial = None
        self.stall_s, self.stalls = None, 0
        self.chosen, self.confirmed = None, False  # the last pick's choice; whether it repeated the one before
        self.large = None  # a large plan's watch: [runs, one-thread reference (s), next probe run]
        self.last_end = float("-inf")  # when the last watched run ended (perf_counter)

    @property
    def settled(self) -> bool:
        """Whether a pick has been made and none is under way (or none ever will be)."""
        return self.runs is None or (bool(self.times) and self.trial is None)

    @property
    def steady(self) -> bool:
        """Settled on the same choice by two picks in a row (or never picking): the next pick is
        REPICK_GROWTH x further off than the last; a large plan once it has its one-thread reference."""
        if self.large is not None:
            return self.large[1] is not None
        return self.runs is None or (self.settled and self.confirmed)

    def run(self, execute) -> None:
        """One run of the plan: ``execute()`` on `threads` (which it reads), timed where a pick or
        the stall watch needs it."""
        if self.large is not None:
            self._large_run(execute)
        elif self.trial is not None:
            self._trial_run(execute)
        elif self.runs is None or self.runs + 1 != self.next_pick:
            if self.stall_s is None:
                execute()
            else:
                self._watched(execute)
            if self.runs is not None:
                self.runs += 1
        else:  # the run that starts a pick (the first pays for first touches: never the first)
            t0 = time.thread_time()  # CPU time: under load the wall clock is mostly waiting
            execute()
            self.runs += 1
            if self.runs == 2 and time.thread_time() - t0 >= PICK_BELOW_S:
                self.runs = None  # a large plan keeps every thread while its runs do not stall
                self.large = [2, None, None]
            else:  # the next runs measure 1 thread against all
                self.trial, self.stall_s = ThreadTrial(self.most), None

    def _trial_run(self, execute) -> None:
        """A run of the pick's trial, on the threads it asks for; the last one makes the choice."""
        trial = self.trial
        self.threads = trial.threads
        t0 = time.perf_counter()
        execute()
        over = trial.record(time.perf_counter() - t0)
        self.runs += 1
        if over:
            self.trial = None
            self.threads, self.times = trial.choice()
            self.confirmed, self.chosen = self.threads == self.chosen, self.threads
            self.gap = min(REPICK_GROWTH * self.gap, REPICK_MAX) if self.confirmed else REPICK_FIRST
            self.next_pick = self.runs + self.gap
            self.stall_s = STALL_RATIO * self.times[1] / 1e3 if self.threads > 1 else None
            self.stalls = 0

    def _large_run(self, execute) -> None:
        """A run of a large plan, timed: the first (its third run) on one thread for the reference;
        then on all threads STALLS in a row past LARGE_STALL x the reference put it on one thread,
        where the run due for a probe goes on all threads again, and stays there unless it stalls."""
        watch = self.large
        watch[0] += 1
        probe = self.threads == 1 and watch[2] is not None and watch[0] >= watch[2]
        if watch[1] is None or (self.threads == 1 and not probe):
            keep, self.threads = self.threads if watch[1] is not None else self.most, 1
            t0 = time.perf_counter()
            execute()
            watch[1], self.threads = time.perf_counter() - t0, keep
            return
        self.threads = self.most
        t0 = time.perf_counter()
        execute()
        if time.perf_counter() - t0 <= LARGE_STALL * watch[1]:
            self.stalls = 0
            if probe:
                self.gap = REPICK_FIRST
            return
        self.stalls += 1
        if probe or self.stalls >= STALLS:
            self.gap = min(2 * self.gap, REPICK_MAX) if probe else REPICK_FIRST
            self.threads, self.stalls, watch[2] = 1, 0, watch[0] + self.gap

    def _watched(self, execute) -> None:
        """A run on all threads, timed: STALLS stalled runs in a row put the plan on one thread. A
        run that starts more than IDLE_GAP_S after the last one ended counts neither way: it wakes
        the pool's sleeping workers (and their idle cores), which no load causes."""
        t0 = time.perf_counter()
        execute()
        end = time.perf_counter()
        after_idle, self.last_end = t0 - self.last_end > IDLE_GAP_S, end
        if after_idle:
            return
        if end - t0 < self.stall_s:
            self.stalls = 0
        else:
            self.stalls += 1
            if self.stalls >= STALLS:  # and picks again soon: a hiccup must not cost a long gap
                self.threads, self.stall_s = 1, None
                self.next_pick = min(self.next_pick, self.runs + 1 + REPICK_FIRST)
                self.gap, self.confirmed = REPICK_FIRST, False  # the conditions changed
