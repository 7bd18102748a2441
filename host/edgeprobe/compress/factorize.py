"""Low-rank factorization (``lowrank``) and k-means weight sharing (``cluster``).

``lowrank`` replaces a Linear or Conv2d by two thinner layers from the truncated SVD of its weight,
so the dense model really has fewer parameters and the ``.pte`` really shrinks. ``cluster`` snaps
every Conv/Linear weight to one of ``k`` shared values per layer; the ``.pte`` still stores those
values as fp32, so the saving is computed (``storage_bytes_if_packed``), not measured in the artifact.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from edgeprobe.compress import Context, Param, Step, count_params, recipe
from edgeprobe.errors import UsageError

# ----------------------------------------------------------------------------------------------
# lowrank
# ----------------------------------------------------------------------------------------------


def _rank_for(rank: float, full: int) -> int:
    """``rank`` < 1: that fraction of ``full`` (rounded half up, at least 1); else an absolute rank
    (rounded down, at most ``full``)."""
    if rank < 1:
        return max(1, min(full, int(math.floor(rank * full + 0.5))))
    return max(1, min(full, int(rank)))


def _svd_factors(w2d: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``w2d`` (m, n) ~= A (m, r) @ B (r, n) with A = U·sqrt(S), B = sqrt(S)·Vt; also the relative
    Frobenius error ||W - AB|| / ||W|| of the factors in ``w2d``'s dtype (what the model will hold)."""
    w64 = w2d.detach().to(torch.float64)
    if w64.shape[0] < w64.shape[1]:
        # LAPACK's SVD is several times faster on tall matrices (512x4608 float64 on 2 cores: 6.5 s
        # wide, 1.5 s transposed), so factor W^T = V S U^T and swap.
        v, s, uh = torch.linalg.svd(w64.T, full_matrices=False)
        u, vh = uh.T, v.T
    else:
        u, s, vh = torch.linalg.svd(w64, full_matrices=False)
    root = s[:r].sqrt()
    a = (u[:, :r] * root).to(w2d.dtype)
    b = (root[:, None] * vh[:r]).to(w2d.dtype)
    norm = float(torch.linalg.matrix_norm(w64))
    err = float(torch.linalg.matrix_norm(w64 - a.to(torch.float64) @ b.to(torch.float64)))
    return a, b, (err / norm if norm > 0 else 0.0)


def factorize_linear(layer: nn.Linear, r: int) -> tuple[nn.Sequential, float]:
    """Linear(in, out) -> Sequential(Linear(in, r, bias=False), Linear(r, out, bias)); the error."""
    w = layer.weight
    a, b, err = _svd_factors(w, r)
    kw = dict(device=w.device, dtype=w.dtype)
    first = nn.Linear(layer.in_features, r, bias=False, **kw)
    second = nn.Linear(r, layer.out_features, bias=layer.bias is not None, **kw)
    with torch.no_grad():
        first.weight.copy_(b)
        second.weight.copy_(a)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    seq = nn.Sequential(first, second)
    seq.train(layer.training)
    return seq, err


def factorize_conv2d(layer: nn.Conv2d, r: int) -> tuple[nn.Sequential, float]:
    """Conv2d(cin, cout, k, ...) -> Sequential(Conv2d(cin, r, k, ..., bias=False), Conv2d(r, cout, 1,
    bias)) from the SVD of the weight reshaped (cout, cin·kh·kw); ``groups`` must be 1."""
    assert layer.groups == 1
    w = layer.weight
    cout, cin, kh, kw_ = w.shape
    a, b, err = _svd_factors(w.reshape(cout, cin * kh * kw_), r)
    kw = dict(device=w.device, dtype=w.dtype)
    first = nn.Conv2d(cin, r, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                      dilation=layer.dilation, bias=False, padding_mode=layer.padding_mode, **kw)
    second = nn.Conv2d(r, cout, 1, bias=layer.bias is not None, **kw)
    with torch.no_grad():
        first.weight.copy_(b.reshape(r, cin, kh, kw_))
        second.weight.copy_(a.reshape(cout, r, 1, 1))
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    seq = nn.Sequential(first, second)
    seq.train(layer.training)
    return seq, err


def _weight_users(model: nn.Module) -> dict[int, int]:
    """How many modules hold each parameter (tied weights are held by more than one)."""
    users: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            users[id(p)] = users.get(id(p), 0) + 1
    return users


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


@recipe(
    "lowrank",
    kind="module",
    help="SVD factorization of Linear/Conv2d weights (rank < 1: fraction of each layer's full rank; "
         ">= 1: absolute rank); a layer is replaced only when that saves parameters",
    params=[
        Param("rank", 0.5, "fraction (< 1) of each layer's full rank, or an absolute rank (>= 1)"),
        Param("min_saving", 0.0, "replace a layer only if it saves at least this fraction of its weights"),
    ],
    positional="rank",
)
def lowrank(model: nn.Module, ctx: Context, rank: float = 0.5, min_saving: float = 0.0):
    if not isinstance(model, nn.Module):
        raise UsageError("lowrank works on an eager nn.Module; put quantization after it (lowrank:0.5+int8)")
    if not rank > 0:
        raise UsageError(f"lowrank: rank must be > 0 (a fraction < 1 or an absolute rank >= 1), got {rank}")
    if not 0.0 <= min_saving < 1.0:
        raise UsageError(f"lowrank: min_saving must be in [0, 1), got {min_saving}")
    before = count_params(model)
    users = _weight_users(model)
    no_saving: list[str] = []
    grouped: list[str] = []
    tied: list[str] = []
    per_layer: dict[str, dict[str, float]] = {}
    replaced: dict[int, nn.Module] = {}  # a module used at several places is replaced once, everywhere
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if id(m) in replaced:
            _set_child(model, name, replaced[id(m)])
            continue
        # Exact types only: subclasses (e.g. MultiheadAttention's out_proj) may have their weight
        # read directly by their parent, which a Sequential in their place would break.
        if type(m) is nn.Linear:
            cout, fan_in = m.out_features, m.in_features
        elif type(m) is nn.Conv2d:
            if m.groups != 1:
                grouped.append(name)
                continue
            cout, fan_in = m.out_channels, m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        else:
            continue
        if users.get(id(m.weight), 1) > 1:
            tied.append(name)
            continue
        full = min(cout, fan_in)
        r = _rank_for(rank, full)
        original = cout * fan_in
        factored = r * (fan_in + cout)
        if not (factored < original and factored <= (1.0 - min_saving) * original):
            no_saving.append(f"{name} (rank {r}/{full}: {factored} weights factorized vs {original})")
            continue
        new, err = factorize_linear(m, r) if type(m) is nn.Linear else factorize_conv2d(m, r)
        replaced[id(m)] = new
        _set_child(model, name, new)
        per_layer[name] = {"rank": r, "full_rank": full, "rel_error": err}
    after = count_params(model)
    errors = [v["rel_error"] for v in per_layer.values()]
    notes: list[str] = []
    if no_saving:
        why = f"saving below min_saving={min_saving:g}" if min_saving else "no parameter saving"
        notes.append(f"kept unfactorized ({why} at this rank): " + ", ".join(no_saving))
    if grouped:
        notes.append("grouped/depthwise Conv2d not factorized: " + ", ".join(grouped))
    if tied:
        notes.append("layers with shared (tied) weights not factorized: " + ", ".join(tied))
    if not per_layer:
        notes.append("no layer was factorized: the model is unchanged")
    summary = {
        "params_before": before,
        "params_after": after,
        "param_ratio": after / before if before else 1.0,
        "layers_factorized": len(per_layer),
        "layers_skipped": len(no_saving) + len(grouped) + len(tied),
        "rel_error_max": max(errors, default=0.0),
        "rel_error_mean": sum(errors) / len(errors) if errors else 0.0,
        "per_layer": per_layer,
    }
    return model, Step("", {}, summary, tuple(notes))


# ----------------------------------------------------------------------------------------------
# cluster
# ----------------------------------------------------------------------------------------------

# Values the k-means fit sees per layer (a random subsample for larger layers; every value is then
# assigned to its nearest centroid).
FIT_SAMPLES = 20000
MAX_ITERS = 300

# Why not sklearn.cluster.KMeans: measured on torchvision resnet18 (21 weight tensors, 11.7 M values,
# k=16, 2 CPU cores), KMeans(n_init=1, k-means++, random_state=0) on a 20000-value subsample per layer
# plus assignment took 15.9 s (~0.65 s per fit, mostly fixed overhead) for a relative weight error of
# 0.0973. The 1-D Lloyd iteration below (k-means++ init, then Lloyd on the sorted subsample with prefix
# sums: each iteration is a searchsorted of k-1 midpoints, O(k log n)) took 3.5 s for 0.0966, so it is
# used; a plain Lloyd loop in torch over all values (bucketize + scatter per iteration) took 60 s.


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on 1-D ``x``: up to ``k`` centroids (fewer when ``x`` has fewer distinct values)."""
    first = x[torch.randint(0, x.numel(), (1,), generator=g)]
    cents = [first]
    d2 = (x - first) ** 2
    for _ in range(1, k):
        if float(d2.sum()) <= 0.0:
            break
        i = torch.multinomial(d2, 1, generator=g)
        cents.append(x[i])
        d2 = torch.minimum(d2, (x - x[i]) ** 2)
    return torch.sort(torch.cat(cents))[0]


def kmeans_1d(values: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """Sorted centroids (at most ``k``) of 1-D k-means on ``values`` (subsampled to FIT_SAMPLES)."""
    x = values.detach().reshape(-1).to(torch.float64)
    if x.numel() > FIT_SAMPLES:
        x = x[torch.randint(0, x.numel(), (FIT_SAMPLES,), generator=g)]
    uniq = torch.unique(x)
    if uniq.numel() <= k and x.numel() == values.numel():
        return uniq  # already at most k distinct values: exact
    xs = torch.sort(x)[0]
    csum = torch.cat([xs.new_zeros(1), torch.cumsum(xs, 0)])
    c = _kmeans_pp(xs, k, g)
    prev = None
    for _ in range(MAX_ITERS):
        # On sorted data each cluster is a contiguous run between the midpoints of adjacent centroids.
        cut = torch.searchsorted(xs, (c[1:] + c[:-1]) / 2, right=True)
        bounds = torch.cat([cut.new_zeros(1), cut, cut.new_full((1,), xs.numel())])
        if prev is not None and torch.equal(bounds, prev):
            break
        prev = bounds
        n = bounds[1:] - bounds[:-1]
        s = csum[bounds[1:]] - csum[bounds[:-1]]
        c = torch.sort(torch.where(n > 0, s / n.clamp(min=1), c))[0]  # an empty cluster keeps its centroid
    return c


def _assign(w: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted ``centroids`` for every value of ``w``."""
    c = centroids.to(w.dtype)
    return torch.bucketize(w.reshape(-1), (c[1:] + c[:-1]) / 2)


def index_bits(k: int) -> int:
    """Bits per cluster index for a codebook of ``k`` entries (ceil(log2 k); 0 for a single value)."""
    return math.ceil(math.log2(k)) if k > 1 else 0


def compressed_size_bytes(model: nn.Module, codebooks: Mapping[str, int]) -> int:
    """Bytes to store ``model`` with the parameters named in ``codebooks`` (name -> codebook size k)
    packed as ceil(numel·ceil(log2 k)/8) index bytes plus k fp32 codebook entries, and every other
    floating-point parameter or buffer as fp32. Integer buffers (BatchNorm's num_batches_tracked) are
    not weights and are not counted."""
    total = 0
    seen: set[int] = set()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in seen or not t.is_floating_point():
            continue
        seen.add(id(t))
        if name in codebooks:
            k = codebooks[name]
            total += math.ceil(t.numel() * index_bits(k) / 8) + 4 * k
        else:
            total += 4 * t.numel()
    return total


def fp32_size_bytes(model: nn.Module) -> int:
    return compressed_size_bytes(model, {})


@recipe(
    "cluster",
    kind="module",
    help="k-means weight sharing: each Conv/Linear weight snapped to k shared values per layer "
         "(the .pte stays fp32; storage_bytes_if_packed is computed)",
    params=[Param("k", 16, "clusters (shared values) per layer", kind=int)],
    positional="k",
)
def cluster(model: nn.Module, ctx: Context, k: int = 16):
    if not isinstance(model, nn.Module):
        raise UsageError("cluster works on an eager nn.Module; put quantization after it (cluster:16+int8)")
    if k < 2:
        raise UsageError(f"cluster: k must be at least 2, got {k}")
    g = torch.Generator().manual_seed(ctx.seed)
    fp32_bytes = fp32_size_bytes(model)
    codebooks: dict[str, int] = {}
    distinct: dict[str, int] = {}
    errors: list[float] = []
    done: set[int] = set()
    for mname, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.numel() == 0 or id(w) in done:
            continue
        done.add(id(w))
        pname = f"{mname}.weight" if mname else "weight"
        with torch.no_grad():
            c = kmeans_1d(w, k, g)
            idx = _assign(w, c)
            new = c.to(w.dtype)[idx].reshape(w.shape)
            norm = float(torch.linalg.vector_norm(w.double()))
            err = float(torch.linalg.vector_norm((new - w).double()))
            w.copy_(new)
            used = torch.bincount(idx, minlength=c.numel()) > 0
        codebooks[pname] = int(c.numel())
        distinct[pname] = int(torch.unique(c.to(w.dtype)[used]).numel())
        errors.append(err / norm if norm > 0 else 0.0)
    packed = compressed_size_bytes(model, codebooks)
    notes = ["the .pte stores fp32 weights; storage_bytes_if_packed is computed from the cluster indices "
             "(log2 k bits each) and codebooks, not measured in the artifact"]
    if not codebooks:
        notes.append("no Conv/Linear weight found: nothing was clustered")
    summary = {
        "k": k,
        "layers_clustered": len(codebooks),
        "distinct_values_max": max(distinct.values(), default=0),
        "rel_error_max": max(errors, default=0.0),
        "rel_error_mean": sum(errors) / len(errors) if errors else 0.0,
        "fp32_bytes": fp32_bytes,
        "storage_bytes_if_packed": packed,
        "storage_ratio": packed / fp32_bytes if fp32_bytes else 1.0,
        "distinct_values": distinct,
    }
    return model, Step("", {}, summary, tuple(notes))
