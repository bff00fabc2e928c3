"""The two models in lockstep: verify.locate runs the reference and the candidate in two threads, and each
module output waits here for its partner (same task, module, call and output index), so that at most one
module output per side is held beyond a normal forward pass."""

from __future__ import annotations

import threading

AHEAD = 2  # outputs a side may leave unmatched before it waits for the other side


class Rendezvous:
    """Pairs the outputs of the two models by key; each side waits while it is AHEAD outputs in front."""

    def __init__(self, on_pair, on_unmatched):
        self.cond = threading.Condition()
        self.pending = ({}, {})  # side -> {key: payload}, insertion-ordered
        self.waiting = [False, False]
        self.done = [False, False]
        self.on_pair, self.on_unmatched = on_pair, on_unmatched

    def post(self, side: int, key, payload) -> None:
        other = 1 - side
        with self.cond:
            match = self.pending[other].pop(key, None)
            if match is None:
                self.pending[side][key] = payload
        if match is not None:
            cand, ref = (payload, match) if side == 0 else (match, payload)
            self.on_pair(key, cand, ref)
            with self.cond:
                self.cond.notify_all()
            return
        with self.cond:
            while len(self.pending[side]) > AHEAD and not self.done[other]:
                if self.waiting[other] and len(self.pending[other]) > AHEAD:
                    # both sides blocked on keys the other never produces (their call sequences differ): drop our oldest
                    old = next(iter(self.pending[side]))
                    self.on_unmatched(side, old, self.pending[side].pop(old))
                    self.cond.notify_all()
                    break
                self.waiting[side] = True
                self.cond.wait(0.2)
                self.waiting[side] = False

    def finish(self, side: int) -> None:
        with self.cond:
            self.done[side] = True
            self.cond.notify_all()

    def leftovers(self) -> None:
        for side in (0, 1):
            for key, payload in list(self.pending[side].items()):
                self.on_unmatched(side, key, payload)
            self.pending[side].clear()
