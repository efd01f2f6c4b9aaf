"""The rounds of the federated layer on one rank (``fl.clients > 0``).

A round t, identically ordered on every rank:

    1. sample     the K clients of the round (sampling.py), the same on every rank
    2. place      onto the ranks by sample count (sampling.place_balanced), or also by each rank's
                  seconds per sample measured in earlier rounds (place_throughput)
    3. move       clients whose state another rank holds are sent to their new host
                  (one object alltoall, issued only when some client moves: every rank knows)
    4. train      for each client placed here: the slot model <- the global model x, the client's
                  loader, optimizer state and control variate swapped in, the torch seed set from
                  (run.seed, t, client) so that dropout does not depend on the placement, then
                  tau_i local steps (sync.period, or ceil(E n_i / B) with fl.local_epochs = E;
                  train/step.py, with the algorithm's gradient correction),
                  and its contribution added to this rank's RoundSums (algorithms.py)
    5. exchange   one allreduce of the rank's sums
    6. server     x += the server optimizer's update of the mean delta (server.py) on the trainable
                  parameters; float buffers (BatchNorm statistics) take the plain weighted mean;
                  SCAFFOLD's c += (1/N) sum Delta c_i; the slot model <- x

The rank file gets one row per local step index of the round, summed over the clients the rank
trained (batch_size, times) or averaged weighted by samples (loss); the exchange is booked on the
round's last row (synced = 1, bytes_sent, t_sync).
"""
from __future__ import annotations

import time

import torch

from ..compress.topk import TopKCompressor
from ..exchange.link import link_wait
from ..telemetry import StepRow, StepTimer
from ..train.step import run_step
from .algorithms import RoundSums, nova_norm, prox_correct_, scaffold_control, scaffold_correct_
from .sampling import local_steps, place_balanced, place_throughput, sample_clients
from .server import build_server_optimizer
from .store import ClientStore, state_bytes, to_cpu

_SEED_STREAM = 1_000_003


def client_seed(seed: int, round_: int, cid: int) -> int:
    """The torch seed of client ``cid``'s local training in round ``round_`` (placement-independent)."""
    return (seed * _SEED_STREAM + round_ * 7_919 + cid * 104_729 + 1) % (2 ** 63)


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


@torch.no_grad()
def unflatten_(tensors: list[torch.Tensor], flat: torch.Tensor) -> None:
    i = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[i:i + n].view_as(t))
        i += n


def views(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for t in like:
        out.append(flat[i:i + t.numel()].view_as(t))
        i += t.numel()
    return out


class Federation:
    """The federation as this rank sees it: the global model x (identical on every rank), the server
    optimizer and control variate, which rank holds each client's state, and the states it holds."""

    def __init__(self, w, loaders: dict, sizes: list[int], spill_dir):
        cfg = w.cfg
        self.w, self.cfg, self.comm, self.c = w, cfg, w.comm, w.client
        self.fl = cfg.fl
        self.loaders, self.sizes = loaders, sizes
        self.n_clients = cfg.fl.clients
        self.k = cfg.fl.clients_per_round or cfg.fl.clients
        self.period = cfg.sync.period  # the round's span of step indices
        # each client's local steps a round: sync.period, or ceil(E n_i / B) with fl.local_epochs = E
        self.taus = local_steps(sizes, cfg.train.batch_size, cfg.fl.local_epochs, self.period)
        self.params, self.state = self.c.sync.params, self.c.sync.state
        self.n_params = sum(p.numel() for p in self.params)
        # FedBN: the entries of x that belong to BatchNorm layers stay with each client
        self.bn_mask = bn_mask(self.c.model, self.state) if cfg.fl.bn == "local" else None
        # FedNova's |a|_1 and SCAFFOLD's option II assume local SGD from a zero momentum buffer
        self.keeps_optimizer = cfg.fl.client_state == "keep" and cfg.fl.algorithm not in ("fednova", "scaffold")
        self.rho = cfg.train.momentum if cfg.train.optimizer in ("sgd", "lars") else 0.0
        # top-k with error feedback on each client's delta (Eq. 9), the residual kept by the client
        self.compressor = None
        if cfg.compress.method == "topk":
            self.compressor = TopKCompressor(cfg.compress, sum(t.numel() for t in self.state), self.c.device,
                                             [t.numel() for t in self.state])
        self.server = build_server_optimizer(cfg.fl)
        self.x: torch.Tensor | None = None  # set by start() once the initial model is everywhere
        self.control = None
        self.owner = [-1] * self.n_clients  # rank holding each client's state (-1: none yet)
        self.store = ClientStore(cfg.fl.state_budget_mb, spill_dir)
        self.samples = 0  # samples this rank's clients processed
        self.rounds_done = 0
        self.moves_last = 0
        self.client_rows: list[dict] = []  # this round's ``clients`` rows (telemetry/h5log.py)
        self.round_row: dict | None = None  # this round's ``rounds`` row
        self._moved_bytes: dict[int, int] = {}
        self.seconds_per_sample: list[float | None] = [None] * w.comm.world_size  # measured, identical everywhere

    def start(self) -> None:
        """After the initial broadcast (or a resume): x is the slot model's state."""
        if self.x is None:
            self.x = flatten(self.state)
        if self.fl.algorithm == "scaffold" and self.control is None:
            self.control = torch.zeros(self.n_params, device=self.x.device)
        unflatten_(self.state, self.x)

    # ----------------------------------------------------------------------------- one round
    def run_round(self, round_: int, timer: StepTimer) -> list[StepRow]:
        comm, cfg = self.comm, self.cfg
        t_round = time.perf_counter()
        self.client_rows = []
        sampled = sample_clients(self.n_clients, self.k, round_, cfg.run.seed, self.sizes,
                                 self.fl.sampling == "weighted")
        places = self.place(sampled)
        self.move(places)
        sums = RoundSums(self.fl.algorithm, self.x.numel(), self.n_params, self.x.device,
                         world_size=comm.world_size)
        per_step: list[list[StepRow]] = [[] for _ in range(self.period)]
        for cid in places[comm.rank]:
            rows = self.train_client(cid, round_, timer, sums)
            for j, row in enumerate(rows):
                per_step[j].append(row)
        timer.start()
        x_old = self.x.clone()
        comm.allreduce_(sums.buf)
        t_link = link_wait(comm, "allreduce", sums.nbytes)  # hetero.link_*: the emulated network
        self.apply(sums)
        timer.lap("sync")
        for r, (seconds, samples) in enumerate(sums.timings()):
            if samples > 0:
                self.seconds_per_sample[r] = seconds / samples
        last_step = (round_ + 1) * self.period - 1
        self.round_row = {"step": last_step, "round": round_, "clients": len(sampled),
                          "samples": int(sums.buf[sums.n_state]), "t_round": time.perf_counter() - t_round,
                          "t_exchange": timer.get("sync"), "update_norm": float((self.x - x_old).norm()),
                          "bytes_sent": sums.nbytes, "moves": self.moves_last, "t_link": t_link}
        for r, cids in enumerate(places):
            for cid in cids:
                self.owner[cid] = r
        self.rounds_done = round_ + 1
        # local step indices no client of this rank reached (fl.local_epochs: tau_i < sync.period) get no row
        rows = [merge_rows(round_ * self.period + j, per_step[j]) for j in range(self.period) if per_step[j]]
        if not rows:  # throughput placement gave this (slow) rank no client: a row for the exchange alone
            rows = [merge_rows(last_step, [])]
        last = rows[-1]
        last.synced, last.bytes_sent = 1, sums.nbytes
        last.t_sync += timer.get("sync")
        last.t_link += t_link
        last.t_step += timer.get("sync")
        return rows

    def place(self, sampled: list[int]) -> list[list[int]]:
        """Step 2 (identical on every rank: the measured speeds came through the allreduce)."""
        spr = self.seconds_per_sample
        if self.fl.placement == "throughput" and all(v is not None and v > 0 for v in spr):
            return place_throughput(sampled, self.sizes, spr)
        return place_balanced(sampled, self.sizes, self.comm.world_size)

    def move(self, places: list[list[int]]) -> None:
        """Step 3: states held by another rank than the client's host this round travel to it."""
        comm = self.comm
        host = {cid: r for r, cids in enumerate(places) for cid in cids}
        moves = [(cid, self.owner[cid], r) for cid, r in host.items() if self.owner[cid] not in (-1, r)]
        self.moves_last = len(moves)
        self._moved_bytes = {}
        if not moves:
            return
        out = [{} for _ in range(comm.world_size)]
        for cid, src, dst in moves:
            if src == comm.rank:
                out[dst][cid] = self.store.pop(cid)
        for got in comm.alltoall_obj(out):
            for cid, state in got.items():
                self._moved_bytes[cid] = state_bytes(state)
                self.store.put(cid, state)

    def train_client(self, cid: int, round_: int, timer: StepTimer, sums: RoundSums) -> list[StepRow]:
        """Step 4 for one client: swap in, its tau_i local steps (sync.period, or fl.local_epochs'
        ceil(E n_i / B)), contribution, swap out."""
        c, fl, w = self.c, self.fl, self.w
        t_swap = time.perf_counter()
        saved = self.store.pop(cid) or {}
        if self.bn_mask is not None and "bn" in saved:  # FedBN: the client's own BatchNorm
            start = self.x.clone()
            start[self.bn_mask] = saved["bn"].to(start.device)
            unflatten_(self.state, start)
        else:
            unflatten_(self.state, self.x)
        c.loader = self.loaders[cid]
        if "loader" in saved:
            c.loader.load_state_dict(saved["loader"])
        if self.keeps_optimizer and saved.get("optimizer") is not None:
            c.opt.load_state_dict(saved["optimizer"])
        else:
            c.opt.state.clear()
        anchor = views(self.x[:self.n_params], self.params)
        c_i = saved.get("control")
        if fl.algorithm == "scaffold":
            c_i = torch.zeros_like(self.control) if c_i is None else c_i.to(self.x.device)
            c_views, c_i_views = views(self.control, self.params), views(c_i, self.params)  # once per client
            c.correction = lambda: scaffold_correct_(c.params, c_views, c_i_views)
        elif fl.algorithm == "fedprox":
            c.correction = lambda: prox_correct_(c.params, anchor, fl.prox_mu)
        else:
            c.correction = None
        torch.manual_seed(client_seed(self.cfg.run.seed, round_, cid))
        t_swap = time.perf_counter() - t_swap
        t_train = time.perf_counter()
        rows = [run_step(w, c, round_ * self.period + j, timer) for j in range(self.taus[cid])]
        t_train = time.perf_counter() - t_train
        t_out = time.perf_counter()
        c.skips += sum(r.nonfinite_skip for r in rows)
        y = flatten(self.state)
        samples = sum(r.batch_size for r in rows)
        self.samples += samples
        d_control = None
        state = {"loader": c.loader.state_dict()}
        if self.bn_mask is not None:
            state["bn"] = to_cpu(y[self.bn_mask], copy=False)
        if fl.algorithm == "scaffold":
            # with momentum rho the tau steps move the model by |a|_1 / tau times more per unit lr
            lr_sum = sum(r.lr for r in rows) * nova_norm(len(rows), self.rho) / len(rows)
            c_new = scaffold_control(c_i, self.control, self.x[:self.n_params], y[:self.n_params], lr_sum)
            d_control = c_new - c_i
            state["control"] = to_cpu(c_new, copy=False)
        a_norm = nova_norm(len(rows), self.rho)
        delta = y - self.x
        uplink = delta.numel() * delta.element_size()
        if self.compressor is not None and round_ * self.period >= self.cfg.compress.warmup_steps:
            delta, uplink = self.compress(cid, saved, delta)
            state["compressor"] = to_cpu(self.compressor.state_dict())
        elif self.compressor is not None and "compressor" in saved:
            state["compressor"] = saved["compressor"]  # popped from the store: nobody else holds it
        if d_control is not None:  # SCAFFOLD's client also sends Delta c_i (dense)
            uplink += d_control.numel() * d_control.element_size()
        sums.add(delta, samples, a_norm, d_control)
        sums.add_timing(self.comm.rank, t_train, samples)
        if self.keeps_optimizer:
            state["optimizer"] = to_cpu(c.opt.state_dict())  # copies: the live buffers are the slot's
        self.store.put(cid, state, copy=False)  # every tensor in it is a fresh copy or a new result
        self.client_rows.append({
            "step": (round_ + 1) * self.period - 1, "round": round_, "client": cid, "samples": samples,
            "local_steps": len(rows), "loss_first": rows[0].loss, "loss_last": rows[-1].loss,
            "delta_norm": float(delta.norm()), "t_train": t_train,
            "t_swap": t_swap + time.perf_counter() - t_out, "bytes_moved": self._moved_bytes.get(cid, 0),
            "uplink_bytes": uplink})
        return rows

    def compress(self, cid: int, saved: dict, delta: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The client's delta as top-k of (delta + its residual), dense again for the rank's sum, and
        the bytes a client would send: k values (float32) and k indices (int32)."""
        comp = self.compressor
        if "compressor" in saved:
            comp.load_state_dict(saved["compressor"])
        else:  # a client's first compressed round: no residual, its own selection stream
            comp.residual.zero_()
            comp.steps = 0
            comp.generator.manual_seed(self.cfg.run.seed * 1_000_003 + cid + 7919)
        values, idx = comp.compress(delta)
        sent = torch.zeros_like(delta)
        sent[idx] = values
        return sent, int(values.numel()) * 8

    @torch.no_grad()
    def apply(self, sums: RoundSums) -> None:
        """Step 6: the server update, identical on every rank."""
        delta = sums.mean_delta()
        p = self.n_params
        self.server.step_(self.x[:p], delta[:p])
        self.x[p:] += delta[p:]
        if self.control is not None:
            self.control += sums.control_sum() / self.n_clients
        unflatten_(self.state, self.x)

    # --------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        return {"x": to_cpu(self.x), "server": to_cpu(self.server.state_dict()),
                "control": to_cpu(self.control), "owner": list(self.owner), "rounds_done": self.rounds_done,
                "samples": self.samples, "seconds_per_sample": list(self.seconds_per_sample),
                "clients": {cid: self.store.get(cid) for cid in self.store.ids()}}

    def load_state_dict(self, d: dict) -> None:
        dev = self.c.device
        self.x = d["x"].to(dev)
        self.server.load_state_dict({k: (v.to(dev) if v is not None else None) for k, v in d["server"].items()})
        self.control = d["control"].to(dev) if d["control"] is not None else None
        self.owner = [int(o) for o in d["owner"]]
        self.rounds_done, self.samples = int(d["rounds_done"]), int(d["samples"])
        spr = list(d.get("seconds_per_sample", []))
        if len(spr) == self.comm.world_size:  # measured on these ranks; another rank count measures anew
            self.seconds_per_sample = spr
        for cid, state in d["clients"].items():
            self.store.put(int(cid), state)
        unflatten_(self.state, self.x)


def bn_mask(model: torch.nn.Module, state: list[torch.Tensor]) -> torch.Tensor:
    """Which entries of the flat state (``state``'s tensors in order) belong to BatchNorm layers: their
    weight, bias, running_mean and running_var (FedBN, Li et al., ICLR 2021, Algorithm 1)."""
    ids = {id(t) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
           for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    return torch.cat([torch.full((t.numel(),), id(t) in ids, dtype=torch.bool, device=t.device) for t in state])


def merge_rows(step: int, rows: list[StepRow]) -> StepRow:
    """The rank's row of one local step index: the clients' rows summed (batch, times, skips) and the
    loss averaged weighted by batch."""
    out = StepRow(step=step)
    if not rows:
        return out
    n = sum(r.batch_size for r in rows)
    out.batch_size = n
    out.lr, out.epoch = rows[0].lr, sum(r.epoch for r in rows) / len(rows)
    out.loss = sum(r.loss * r.batch_size for r in rows) / n if n else float("nan")
    out.grad_norm_sq = sum(r.grad_norm_sq for r in rows) / len(rows)
    for name in ("t_data", "t_compute", "t_compress", "t_sync", "t_step", "t_straggle", "t_teacher"):
        setattr(out, name, sum(getattr(r, name) for r in rows))
    out.nonfinite_skip = int(any(r.nonfinite_skip for r in rows))
    out.scale_factor = rows[0].scale_factor
    busy = out.t_compute + out.t_straggle
    out.throughput = n / busy if busy > 0 else 0.0
    return out
