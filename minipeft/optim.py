"""Optimizers, gradient clipping and learning-rate schedules.

    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sched = warmup_linear(opt, warmup_steps=100, total_steps=1000)
    for batch in data:
        loss = model(batch)
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        sched.step()

What parameter-efficient fine-tuning changes here: an optimizer keeps state (momentum, Adam's m
and v) only for parameters with `requires_grad=True`. Freeze 99% of a model and the optimizer
memory shrinks by 99% too: `opt.state_bytes()` reports it.

Conventions (PyTorch's, so that numbers can be compared side by side):
- `params` is an iterable of Tensors, or of parameter-group dicts
  `{"params": [...], "lr": ..., "weight_decay": ...}`; a key a group leaves out takes the
  optimizer's default. Groups give layer-wise learning rates and no-decay groups
  (see `param_groups_no_decay`).
- Updates are in place on `p.data`: a parameter keeps its identity, shape and dtype.
  Hyperparameters are Python floats, never NumPy float64 scalars (NEP 50: a float32 array times
  a float64 scalar is float64), so float32 parameters stay float32.
- `step()` never moves data between host and device: hyperparameters and step counts live on
  the host as Python numbers; arrays stay where they are.
- Gradients are read-only (the backward pass may share them): nothing here writes into `.grad`.
"""
from __future__ import annotations

import math

from . import backend


# ============================================================================= parameter groups

def _as_groups(params, defaults: dict) -> list[dict]:
    """Normalise `params` (Tensors or group dicts) into a list of group dicts with every key set."""
    if hasattr(params, "data") and hasattr(params, "requires_grad"):
        raise TypeError("params should be an iterable of Tensors or of parameter-group dicts, got a "
                        "single Tensor; wrap it in a list: Optimizer([p], ...)")
    if isinstance(params, dict):
        raise TypeError("params should be an iterable of Tensors or of group dicts, got one dict; "
                        "wrap it in a list: Optimizer([{'params': [...], 'lr': ...}], ...)")
    items = list(params)
    if not items:
        raise ValueError("the optimizer got an empty parameter list; pass model.parameters() (are you "
                         "passing a generator that was already consumed?)")
    if all(isinstance(it, dict) for it in items):
        raw_groups = items
    elif any(isinstance(it, dict) for it in items):
        raise TypeError("params mixes Tensors and group dicts; pass either Tensors or only dicts "
                        "like {'params': [...], 'lr': ...}")
    else:
        raw_groups = [{"params": items}]

    groups, seen = [], set()
    for gi, raw in enumerate(raw_groups):
        if "params" not in raw:
            raise ValueError(f"parameter group {gi} has no 'params' key; a group is a dict "
                             f"{{'params': [tensors], 'lr': ..., 'weight_decay': ...}}")
        # unknown keys are refused so that a typo ("learning_rate") cannot be silently ignored;
        # "name" may label a group (e.g. "layer 3", "no_decay") for logs
        unknown = set(raw) - set(defaults) - {"params", "name"}
        if unknown:
            raise ValueError(f"parameter group {gi} has unknown keys {sorted(unknown)}; "
                             f"known keys: ['params', 'name'] + {sorted(defaults)}")
        ps = raw["params"]
        if hasattr(ps, "data") and hasattr(ps, "requires_grad"):
            ps = [ps]
        ps = list(ps)
        for p in ps:
            if not (hasattr(p, "data") and hasattr(p, "requires_grad")):
                hint = (" (got a (name, parameter) pair: pass model.parameters(), not "
                        "named_parameters())" if isinstance(p, tuple) else "")
                raise TypeError(f"parameter group {gi} holds a {type(p).__name__}, expected Tensors"
                                f"{hint}")
            if id(p) in seen:
                raise ValueError(f"a parameter of shape {tuple(p.data.shape)} appears more than once in "
                                 f"the parameter groups (group {gi}); each parameter must be in exactly "
                                 f"one group (tied weights: pass the shared parameter once)")
            seen.add(id(p))
        group = dict(defaults)
        group.update({k: v for k, v in raw.items() if k != "params"})
        group["params"] = ps
        groups.append(group)
    return groups


def param_groups_no_decay(named_params, weight_decay: float, no_decay_names=()) -> list[dict]:
    """Split trainable parameters into a decayed group and a zero-decay group.

    Rule: a parameter with fewer than 2 dimensions (biases, LayerNorm gains and biases, scalar
    gates) gets no weight decay; so does any parameter whose name contains one of the strings in
    `no_decay_names` (e.g. `("wte", "wpe")` to exclude embeddings as minGPT does; BERT's recipe
    decays embeddings, and the default follows it). Matrices (Linear weights, embeddings, LoRA A
    and B) are decayed. Shrinking a LayerNorm gain towards 0 or a bias towards 0 has no
    regularising meaning, which is why they are excluded.

    named_params: iterable of (name, parameter), e.g. `model.named_parameters()`.
    Frozen parameters (requires_grad=False) are left out: they are not trained. A parameter seen
    twice (tied weights) is kept once.
    Returns `[{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]`
    (both groups always present, possibly empty, so that the group layout does not depend on the
    model), ready for `AdamW(groups, lr=...)`.
    """
    decay, no_decay, seen = [], [], set()
    for name, p in named_params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.data.ndim < 2 or any(s in name for s in no_decay_names):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0}]


# ============================================================================= the optimizer base

class Optimizer:
    """Base class: parameter groups, per-parameter state, zero_grad, state_dict.

    Subclasses define `_new_state(p, group) -> dict` (the buffers one parameter needs) and
    `_update(p, g, state, group)` (one in-place step of one parameter).
    """

    defaults: dict = {}

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups = _as_groups(params, self.defaults)
        for group in self.param_groups:
            self._check_group(group)
        # state[id(p)] -> dict of arrays and Python numbers; created only for trainable parameters
        self.state: dict[int, dict] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    self.state[id(p)] = self._new_state(p, group)

    # -------------------------------------------------------------- subclass hooks
    def _check_group(self, group: dict) -> None:
        if group["lr"] < 0:
            raise ValueError(f"learning rate must be >= 0, got {group['lr']}")
        if group["weight_decay"] < 0:
            raise ValueError(f"weight_decay must be >= 0, got {group['weight_decay']}")

    def _new_state(self, p, group) -> dict:
        return {}

    def _update(self, p, g, state: dict, group: dict) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------- the training-loop API
    def step(self) -> None:
        """Update every trainable parameter that has a gradient, in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad or p.grad is None:
                    continue  # frozen, or not reached by this backward pass
                state = self.state.get(id(p))
                if state is None:  # a parameter unfrozen after the optimizer was built
                    state = self.state[id(p)] = self._new_state(p, group)
                self._update(p, p.grad, state, group)

    def zero_grad(self) -> None:
        """Forget the gradients (set `.grad` to None; the next backward starts fresh)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def parameters(self):
        for group in self.param_groups:
            yield from group["params"]

    def state_bytes(self) -> int:
        """Bytes held by optimizer state (momentum buffers, Adam's m and v)."""
        return sum(v.nbytes for st in self.state.values() for v in st.values() if hasattr(v, "nbytes"))

    # -------------------------------------------------------------- saving and resuming
    def state_dict(self) -> dict:
        """A snapshot to resume training from: `{"state": {pos: {...}}, "param_groups": [...]}`.

        Parameters are named by their position in the groups (0, 1, 2, ... across all groups in
        order), as in PyTorch; the group dicts hold the hyperparameters and `"params"`: the list
        of positions. Arrays are COPIES (the live buffers are updated in place by `step()`, so a
        reference would silently change after it was taken). Scalars are Python numbers.
        See `minipeft.checkpoint.save_optimizer_state` to write it to disk.
        """
        state, groups, pos = {}, [], 0
        for group in self.param_groups:
            g = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"}
            g["params"] = list(range(pos, pos + len(group["params"])))
            groups.append(g)
            for p in group["params"]:
                st = self.state.get(id(p))
                if st is not None:
                    state[pos] = {k: (v.copy() if hasattr(v, "nbytes") else v) for k, v in st.items()}
                pos += 1
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a `state_dict()` (hyperparameters and state) into an optimizer built over the
        same parameters in the same order. Arrays are copied onto the current backend."""
        xp = backend.xp
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(saved_groups)} parameter groups but this optimizer "
                             f"has {len(self.param_groups)}; build the optimizer with the same groups as the "
                             f"run that saved it")
        for i, (sg, g) in enumerate(zip(saved_groups, self.param_groups)):
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(f"parameter group {i}: the saved state has {len(sg['params'])} parameters, "
                                 f"this optimizer has {len(g['params'])}; was the model or the set of "
                                 f"trainable parameters changed?")
        params = list(self.parameters())
        new_state, problems = {}, []
        for key, st in state_dict["state"].items():
            pos = int(key)  # JSON round trips turn integer keys into strings
            if not 0 <= pos < len(params):
                problems.append(f"state for parameter position {pos}, but there are only {len(params)}")
                continue
            p = params[pos]
            loaded = {}
            for k, v in st.items():
                if hasattr(v, "shape"):
                    if tuple(v.shape) != tuple(p.data.shape):
                        problems.append(f"parameter {pos} ({p.name or 'unnamed'}): state '{k}' has shape "
                                        f"{tuple(v.shape)}, the parameter has {tuple(p.data.shape)}")
                        continue
                    # a fresh copy on this backend, in the parameter's dtype
                    loaded[k] = xp.array(backend.to_device(v), dtype=p.data.dtype, copy=True)
                else:
                    loaded[k] = v
            new_state[id(p)] = loaded
        if problems:
            raise ValueError("optimizer state does not fit these parameters:\n  " + "\n  ".join(problems))
        for sg, g in zip(saved_groups, self.param_groups):
            for k, v in sg.items():
                if k != "params":
                    g[k] = tuple(v) if isinstance(v, list) else v
        # parameters without saved state (e.g. trainable now but not then) start fresh
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad and id(p) not in new_state:
                    new_state[id(p)] = self._new_state(p, group)
        self.state = new_state

    def __repr__(self):
        n = sum(1 for p in self.parameters() if p.requires_grad)
        return (f"{type(self).__name__}({len(self.param_groups)} groups, {n} trainable parameters, "
                f"defaults={self.defaults})")


# ============================================================================= SGD

class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay.

    Per parameter theta with gradient g, learning rate lr, momentum mu, weight decay wd:
        g   <- g + wd * theta                 (L2 penalty wd/2 ||theta||^2, coupled to g, as in PyTorch)
        b   <- mu * b + g                     (momentum buffer; b starts at 0, so b_1 = g_1)
        d   <- g + mu * b  if nesterov else b
        theta <- theta - lr * d
    With momentum 0 there is no buffer and no state.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        super().__init__(params, dict(lr=float(lr), momentum=float(momentum),
                                      weight_decay=float(weight_decay), nesterov=bool(nesterov)))

    def _check_group(self, group):
        super()._check_group(group)
        if group["momentum"] < 0:
            raise ValueError(f"momentum must be >= 0, got {group['momentum']}")
        if group["nesterov"] and group["momentum"] <= 0:
            raise ValueError("nesterov=True needs momentum > 0")

    def _new_state(self, p, group):
        if group["momentum"] == 0:
            return {}
        return {"momentum_buffer": backend.xp.zeros_like(p.data)}

    def _update(self, p, g, state, group):
        xp = backend.xp
        # hyperparameters are host numbers: float() makes a NumPy scalar a Python float (NEP 50)
        lr, mu, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        if wd != 0.0:
            g = g + wd * p.data                              # g <- g + wd * theta  (new array: g is read-only)
        if mu != 0.0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = xp.zeros_like(p.data)
            buf *= mu                                        # b <- mu * b ...
            buf += g                                         #      ... + g
            if group["nesterov"]:
                g = g + mu * buf                             # d <- g + mu * b
            else:
                g = buf                                      # d <- b
        if lr != 0.0:
            p.data -= lr * g                                 # theta <- theta - lr * d


# ============================================================================= AdamW

class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay
    Regularization", ICLR 2019), with bias correction, as `torch.optim.AdamW`.

    Per parameter theta with gradient g at step t (t counts this parameter's updates, from 1):
        theta <- theta - lr * wd * theta            (decay, separate from the gradient step)
        m <- b1 * m + (1 - b1) * g                  (first moment)
        v <- b2 * v + (1 - b2) * g * g              (second moment)
        m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t)
        theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)
    The decay does not pass through m and v, so it is not rescaled by 1/sqrt(v): every weight
    shrinks by the same factor (1 - lr*wd), whatever its gradient history. With L2 regularisation
    inside Adam (`g + wd*theta`) weights with large gradients would be regularised less.
    State per trainable parameter: m and v (2 arrays the size of the parameter) and t.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, dict(lr=float(lr), betas=(float(betas[0]), float(betas[1])),
                                      eps=float(eps), weight_decay=float(weight_decay)))

    def _check_group(self, group):
        super()._check_group(group)
        b1, b2 = group["betas"]
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {group['betas']}")
        if group["eps"] <= 0:
            raise ValueError(f"eps must be > 0, got {group['eps']}")

    def _new_state(self, p, group):
        xp = backend.xp
        return {"step": 0, "exp_avg": xp.zeros_like(p.data), "exp_avg_sq": xp.zeros_like(p.data)}

    def _update(self, p, g, state, group):
        xp = backend.xp
        lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        b1, b2 = float(group["betas"][0]), float(group["betas"][1])
        theta, m, v = p.data, state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        t = state["step"]                                  # a Python int: no device sync

        bc1 = 1.0 - b1 ** t                                # bias corrections (host floats)
        bc2 = 1.0 - b2 ** t

        def adamw_block(theta, m, v, g):                   # every element on its own
            if wd != 0.0:
                theta *= 1.0 - lr * wd                     # theta <- theta - lr*wd*theta  (decoupled)
            tmp = xp.empty_like(theta)                     # one scratch array for this block
            m *= b1                                        # m <- b1*m ...
            xp.multiply(g, 1.0 - b1, out=tmp)
            m += tmp                                       #      ... + (1-b1)*g
            v *= b2                                        # v <- b2*v ...
            xp.multiply(g, g, out=tmp)
            tmp *= 1.0 - b2
            v += tmp                                       #      ... + (1-b2)*g*g
            # lr * m_hat / (sqrt(v_hat) + eps) = (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
            xp.sqrt(v, out=tmp)                            # tmp = sqrt(v)
            tmp *= 1.0 / math.sqrt(bc2)                    # tmp = sqrt(v_hat)
            tmp += eps                                     # tmp = sqrt(v_hat) + eps
            xp.divide(m, tmp, out=tmp)                     # tmp = m / (sqrt(v_hat) + eps)
            tmp *= lr / bc1                                # tmp = lr * m_hat / (sqrt(v_hat) + eps)
            theta -= tmp                                   # theta <- theta - tmp

        if g.shape != theta.shape:
            raise ValueError(f"AdamW: the gradient has shape {tuple(g.shape)} but its parameter has shape "
                             f"{tuple(theta.shape)}; a gradient must have its parameter's shape")
        if theta.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous:
            # flat views, cut into blocks that parallel threads update (backend.rows)
            backend.rows(adamw_block, theta.reshape(-1), m.reshape(-1), v.reshape(-1), g.reshape(-1))
        else:
            adamw_block(theta, m, v, g)


# ============================================================================= gradient clipping

def clip_grad_norm_(params, max_norm: float):
    """Scale all gradients together so that their global L2 norm is at most `max_norm`.

        norm = sqrt(sum over parameters of sum(g*g))
        g <- g * min(1, max_norm / (norm + 1e-6))

    params: iterable of Tensors (or parameter-group dicts); ones with grad None are ignored.
    Returns the norm BEFORE clipping as a 0-d array of the current backend (it stays on the GPU:
    call `float(norm)` when you want a number, e.g. for logging, and accept one sync there).
    Gradients are replaced by new arrays, never modified in place (they may be shared). The
    scaling is always applied, with a factor of exactly 1.0 below the threshold, so that no
    host/device sync is needed to decide; values below the threshold are unchanged bit for bit.
    A non-finite norm (inf/nan in a gradient) makes the gradients nan or 0: check `norm` if in doubt.
    """
    xp = backend.xp
    ps = []
    for item in params:
        ps.extend(item["params"] if isinstance(item, dict) else [item])
    ps = [p for p in ps if p.grad is not None]
    if not ps:
        return xp.zeros((), dtype=backend.default_dtype())
    # sum of squares per gradient, via a dot product (one pass, no g*g temporary)
    sq = [xp.vdot(p.grad.ravel(), p.grad.ravel()) for p in ps]
    total = sq[0]
    for s in sq[1:]:
        total = total + s
    norm = xp.sqrt(xp.asarray(total))
    coef = xp.minimum(max_norm / (norm + 1e-6), 1.0)       # 0-d array; 1.0 when norm <= max_norm
    for p in ps:
        p.grad = p.grad * coef.astype(p.grad.dtype)        # new array (grads are read-only)
    return xp.asarray(norm)


# ============================================================================= learning-rate schedules

class LRScheduler:
    """Multiplies every group's base learning rate by `factor(step)`.

    The base learning rates are the groups' `lr` when the scheduler is built (so layer-wise
    rates keep their ratios). Call `step()` once per optimizer step, after `optimizer.step()`;
    the scheduler starts at step 0 and sets the learning rates for step 0 when it is built.
    """

    def __init__(self, optimizer: Optimizer, factor):
        self.optimizer = optimizer
        self.factor = factor
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def _apply(self) -> None:
        f = float(self.factor(self.last_step))
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f                              # lr_t = base_lr * factor(t)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_lr(self) -> list[float]:
        """The learning rate of each group for the current step."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, sd: dict) -> None:
        self.last_step = int(sd["last_step"])
        self.base_lrs = [float(x) for x in sd["base_lrs"]]
        self._apply()


def _check_steps(warmup_steps: int, total_steps: int | None) -> None:
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps is not None and (total_steps <= 0 or warmup_steps > total_steps):
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps > 0, got "
                         f"warmup_steps={warmup_steps}, total_steps={total_steps}")


def _warmup(step: int, warmup_steps: int) -> float:
    # linear warm-up from 0: factor = step / warmup_steps (0 at step 0, 1 at the end of warm-up)
    return step / warmup_steps


def warmup_linear(optimizer: Optimizer, warmup_steps: int, total_steps: int) -> LRScheduler:
    """Linear warm-up from 0 to the base lr over `warmup_steps`, then linear decay to 0 at
    `total_steps` (and 0 after). Same numbers as HF `get_linear_schedule_with_warmup`:
        factor(s) = s / W                      for s < W
                  = max(0, (T - s) / (T - W))  for s >= W
    """
    _check_steps(warmup_steps, total_steps)

    def factor(s):
        if s < warmup_steps:
            return _warmup(s, warmup_steps)
        return max(0.0, (total_steps - s) / max(1, total_steps - warmup_steps))
    return LRScheduler(optimizer, factor)


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.0) -> LRScheduler:
    """Linear warm-up, then half a cosine from the base lr down to `min_lr_ratio * base lr` at
    `total_steps` (and held there after):
        factor(s) = s / W                                          for s < W
                  = r + (1 - r) * (1 + cos(pi * p)) / 2,  p = (s - W) / (T - W) clipped to [0, 1]
    """
    _check_steps(warmup_steps, total_steps)
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def factor(s):
        if s < warmup_steps:
            return _warmup(s, warmup_steps)
        progress = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return LRScheduler(optimizer, factor)


def constant(optimizer: Optimizer, warmup_steps: int = 0) -> LRScheduler:
    """The base lr at every step (after an optional linear warm-up of `warmup_steps`)."""
    _check_steps(warmup_steps, None)
    return LRScheduler(optimizer, lambda s: _warmup(s, warmup_steps) if s < warmup_steps else 1.0)


__all__ = ["Optimizer", "SGD", "AdamW", "param_groups_no_decay", "clip_grad_norm_", "LRScheduler",
           "warmup_linear", "warmup_cosine", "constant"]
