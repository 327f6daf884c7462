"""Random interleavings of exits, re-exits, concurrent exits, restarts and lying venues.

After every step the one invariant that matters is checked against the venue's ground truth:
never more sold than held, nothing sent while an earlier order of the position could still
land, and every order that may still land is either counted or tracked by the live guard.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exitguard import ExitGuard, Position, RetryPolicy
from exitguard.errors import NetworkError, OrderNotSent, RpcTimeout, TxExpired
from exitguard.outcome import ExitOutcome
from exitguard.pending import MemoryPendingStore
from exitguard.testing import ScriptedVenue, TxPlan, run_virtual
from exitguard.venue import Fill, Submission

POSITIONS = (Position("p0", "SOL", 10.0, 100.0), Position("p1", "SOL", 4.0, 100.0))
EPS = 1e-9

plans = st.builds(
    TxPlan,
    send_error=st.sampled_from([None, None, None, RpcTimeout("read timed out"),
                                NetworkError("reset"), OrderNotSent("rejected")]),
    sent_anyway=st.booleans(),
    confirm_after=st.sampled_from([0.05, 0.5, 3.0]),
    confirm_error=st.sampled_from([None, None, RpcTimeout("timeout"),
                                   ConnectionError("SSL certificate has expired"),
                                   TxExpired("Blockhash not found")]),
    hang=st.booleans(),
    lands_after=st.sampled_from([None, 0.05, 2.0, 15.0, 45.0]),
    expires_after=st.sampled_from([1.0, 10.0, 30.0, 90.0]),
    fill_fraction=st.sampled_from([1.0, 1.0, 0.5, 0.25]),
).map(
    # A definite rejection is a promise that nothing left: a venue that breaks it is outside
    # what any guard can defend against (every other error may or may not have sent it).
    lambda plan: plan if not (isinstance(plan.send_error, OrderNotSent) and plan.sent_anyway)
    else TxPlan(send_error=plan.send_error, lands_after=plan.lands_after)
)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("exit"), st.integers(0, 1)),
        st.tuples(st.just("exit_twice"), st.integers(0, 1)),
        st.tuples(st.just("wait"), st.sampled_from([1.0, 5.0, 20.0, 60.0])),
        st.tuples(st.just("restart"), st.just(0)),
    ),
    min_size=1, max_size=8,
)


class LyingVenue(ScriptedVenue):
    """Some confirmations name an earlier transaction, or claim twice the order."""

    def __init__(self, plans: list[TxPlan], lies: list[str]) -> None:
        super().__init__(plans, default=TxPlan(), price=95.0)
        self.lies = lies

    async def confirm(self, submission: Submission) -> Fill:
        fill = await super().confirm(submission)
        index = next((i for i, tx in enumerate(self.sent) if tx.tx_id == fill.tx_id), 0)
        lie = self.lies[index % len(self.lies)] if self.lies else "none"
        if lie == "other" and index > 0:
            return Fill(self.sent[index - 1].tx_id, fill.size, fill.price)
        if lie == "double":
            return Fill(fill.tx_id, fill.size * 2, fill.price)
        return fill


@dataclass
class World:
    venue: LyingVenue
    store: MemoryPendingStore = field(default_factory=MemoryPendingStore)
    guard: ExitGuard | None = None
    tasks: list[asyncio.Task[ExitOutcome]] = field(default_factory=list)
    counted: set[str] = field(default_factory=set)

    def new_guard(self) -> ExitGuard:
        self.guard = ExitGuard(
            self.venue, name="bot", pending_store=self.store, deadline=12.0,
            background_reconcile_for=30.0,
            policy=RetryPolicy(max_attempts=2, total_timeout=8.0, attempt_timeout=4.0),
        )
        return self.guard

    def check(self) -> None:
        guard = self.guard
        assert guard is not None
        assert self.venue.violations == []
        for position in POSITIONS:
            truth = self.venue.sold_eventually(position.id)
            assert truth <= position.size + EPS, (position.id, truth)
        for position in POSITIONS:
            self.counted |= guard.book.entry(position.id).counted
        tracked = set(guard.pending_tx_ids)
        for tx in self.venue.sent:
            if tx.lands_at is None:
                continue
            ids = {tx.tx_id, tx.order.client_order_id}
            assert ids & (self.counted | tracked), (tx.tx_id, "neither counted nor tracked")


async def play(world: World, steps: list[tuple[str, float]]) -> None:
    loop = asyncio.get_running_loop()
    guard = world.new_guard()
    for action, argument in steps:
        if action in ("exit", "exit_twice"):
            position = POSITIONS[int(argument)]
            for _ in range(2 if action == "exit_twice" else 1):
                world.tasks.append(loop.create_task(guard.exit(position, signal_price=95.0)))
            await asyncio.sleep(0.01)
        elif action == "wait":
            await asyncio.sleep(argument)
        else:  # a crash: the old process's tasks stop where they are; a new one starts
            for task in world.tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*world.tasks, return_exceptions=True)
            world.check()
            await guard.aclose()
            guard = world.new_guard()
            await guard.resume_pending()
        world.check()
    await asyncio.gather(*world.tasks, return_exceptions=True)
    await guard.drain()
    world.check()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=st.lists(plans, min_size=1, max_size=6),
       lies=st.lists(st.sampled_from(["none", "none", "other", "double"]), max_size=3),
       steps=actions)
def test_no_interleaving_sells_more_than_held_or_forgets_an_order(
    plans: list[TxPlan], lies: list[str], steps: list[tuple[str, float]]
) -> None:
    world = World(LyingVenue(plans, lies))
    run_virtual(play(world, steps))
