"""LocalMixer: the MLP-Mixer-like network of Ren et al. (2023), built for local losses.

An image of ``channels × H × W`` pixels is cut into P = s × s square patches (s patches per side);
each patch, flattened, is one *token*, so the input is a tensor of shape (B, P, d) with
d = channels · (H/s) · (W/s). Every layer works on tensors of shape (B, P, C): C *channels* per
token, split into G *groups* of D = C/G channels.

The network is a stack of blocks made of *units*. A unit is

    h = norm_pre(x),   z = linear(h),   y = norm_post(z),   out = ReLU(y [+ block input])

with parameter-free layer norms (mean 0, variance 1 over the channels, or over each group's D
channels), and the residual ``+ block input`` only in the last unit of a block after the first.
The linear layers are of three kinds:

* :class:`DenseLinear`, channel mixing: one weight matrix shared by all patches
  (z_{b,p} = W h_{b,p} + c);
* :class:`GroupLinear`, grouped channel mixing: G independent D × D matrices, one per group;
* :class:`TokenLinear`, token mixing: a P × P matrix that mixes the patches, channel by channel.

Block 0 is ``dense (d → C)``, then ``group``; every later block is ``token``, ``dense (C → C)``,
``group`` with the residual. After block l a linear *block head* (C → classes) reads
the spatial average of its output, each group layer-normed on its own; after the last block the
*final head* reads the layer-normed spatial average and gives the network's prediction.

Names follow Ren et al.'s Table 2: ``size/patches per side/groups`` (:data:`VARIANTS`), e.g.
``"M/1/16"``: one block, C = 512 channels, one patch (the whole 28 × 28 image is one token),
G = 16 groups. :func:`parameter_count` and :data:`PAPER_PARAMETERS` compare our counts with the
paper's.

**Local losses.** With ``local=True`` (:class:`Trace`) every block's input is cut from the graph
(a stop-gradient; in forward mode the tangent is dropped), so block l learns from its own head's
loss only, and the final head reads a stop-gradient of the last block. Inside a block the loss
is split further, per patch p and group g: the loss L_{b,p,g} of example b sees the features of
patch p and group g, and everything else through a stop-gradient. Its value is the block head's
cross-entropy of example b; its gradient with respect to the head input f_{b,p,g} is
(1/P) (W_headᵀ (softmax − onehot))_g. Forward-gradient methods use these losses' directional
derivatives one by one (:mod:`ffkit.methods.local`); for backprop their sum has the gradient of
the block loss.

**Perturbing activities.** A :class:`Trace` can carry a tangent source: each unit then adds a
tangent u (a dual number, :mod:`torch.autograd.forward_ad`) to its output y after the layer
norm and before the ReLU, and records what the activity-perturbation step needs afterwards
(the unit's input h, its pre-norm output z, u and the ReLU's active units): a :class:`Site`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

from ffkit.tangents import LowRank

__all__ = [
    "DenseLinear",
    "GroupLinear",
    "LocalMixer",
    "MixerConfig",
    "PAPER_PARAMETERS",
    "Site",
    "TokenLinear",
    "Trace",
    "Unit",
    "VARIANTS",
    "layer_norm",
    "layer_norm_jvp",
    "layer_norm_vjp",
    "parameter_count",
    "tangent_forward",
    "token_mean",
]

#: ε of every layer norm.
EPS = 1e-5


@dataclass(frozen=True)
class MixerConfig:
    """The shape of a LocalMixer: ``blocks`` blocks of ``channels`` channels in ``groups`` groups,
    on ``patches`` × ``patches`` patches."""

    blocks: int
    channels: int
    patches: int
    groups: int

    def __post_init__(self) -> None:
        for name in ("blocks", "channels", "patches", "groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.channels % self.groups:
            raise ValueError(f"{self.groups} groups do not divide {self.channels} channels")

    @property
    def name(self) -> str:
        """Ren et al.'s name when the shape is one of :data:`VARIANTS`, else a descriptive one."""
        for key, cfg in VARIANTS.items():
            if cfg == self:
                return key
        return f"{self.blocks}x{self.channels}/{self.patches}/{self.groups}"


#: Ren et al. (2023), Table 2: name -> shape. S/1/1 and M/1/16 are their MNIST networks, M/8/16
#: and L/8/64 their CIFAR-10 ones.
VARIANTS: dict[str, MixerConfig] = {
    "S/1/1": MixerConfig(blocks=1, channels=256, patches=1, groups=1),
    "M/1/16": MixerConfig(blocks=1, channels=512, patches=1, groups=16),
    "M/8/16": MixerConfig(blocks=4, channels=512, patches=8, groups=16),
    "L/8/64": MixerConfig(blocks=4, channels=2048, patches=8, groups=64),
}

#: The parameter counts Ren et al. (2023) give for the variants (Table 2), with the input they
#: were trained on: ``name -> (count, (channels, height, width), classes)``.
PAPER_PARAMETERS: dict[str, tuple[int, tuple[int, int, int], int]] = {
    "S/1/1": (272_000, (1, 28, 28), 10),
    "M/1/16": (429_000, (1, 28, 28), 10),
    "M/8/16": (919_000, (3, 32, 32), 10),
    "L/8/64": (13_100_000, (3, 32, 32), 10),
}


def _config(arch: str | MixerConfig) -> MixerConfig:
    if isinstance(arch, MixerConfig):
        return arch
    if not isinstance(arch, str) or arch not in VARIANTS:
        raise ValueError(f"unknown LocalMixer architecture {arch!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[arch]


# --------------------------------------------------------------------------- layer norm


def token_mean(h: Tensor) -> Tensor:
    """The spatial average (1/P) Σ_p h_{b,p} of tokens (B, P, C) -> (B, C); with one token a view
    (a reduction over an axis of length one costs as much as a copy on a CPU)."""
    return h.squeeze(1) if h.shape[1] == 1 else h.mean(1)


def layer_norm(x: Tensor, size: int) -> Tensor:
    """Parameter-free layer norm of every consecutive segment of ``size`` entries of the last axis.

    ``size`` = C normalises each token's channels, ``size`` = D each group of a token:
    y = (x − μ)/σ with μ, σ² the mean and (biased) variance of the segment, σ² + ε under the root.
    """
    if x.shape[-1] == size:
        return F.layer_norm(x, (size,), eps=EPS)
    return F.layer_norm(x.unflatten(-1, (-1, size)), (size,), eps=EPS).flatten(-2)


def layer_norm_jvp(z: Tensor, dz: Tensor | None, size: int) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """y = :func:`layer_norm` (z, size), its tangent ẏ for the tangent ż (``None``: no tangent),
    and the segments' mean and 1/σ (shaped (..., C/size, 1)), which the backward step reuses.

    The layer norm's Jacobian J = (1/σ)(I − 11ᵀ/n − ŷŷᵀ/n) (ŷ = (z − μ)/σ, n = ``size``) is
    symmetric, so ẏ = J ż is computed by the same fused kernel as the backward step
    (:func:`layer_norm_vjp`).
    """
    zs = z.unflatten(-1, (-1, size))
    y, mean, rstd = torch.native_layer_norm(zs, (size,), None, None, EPS)
    dy = None
    if dz is not None:
        dy = _norm_backward(dz.unflatten(-1, (-1, size)), zs, size, mean, rstd).flatten(-2)
    return y.flatten(-2), dy, mean, rstd


def _norm_backward(g: Tensor, zs: Tensor, size: int, mean: Tensor, rstd: Tensor) -> Tensor:
    return torch.ops.aten.native_layer_norm_backward(g, zs, (size,), mean, rstd, None, None, [True, False, False])[0]


def layer_norm_vjp(
    z: Tensor, grad_y: Tensor, size: int, *, mean: Tensor | None = None, rstd: Tensor | None = None
) -> Tensor:
    """∂L/∂z from ∂L/∂y for y = :func:`layer_norm` (z, size): the only backward step of the
    activity-perturbation method.

    With ŷ = (z − μ)/σ on each segment, ∂L/∂z = (1/σ) (g − mean(g) − ŷ · mean(g ŷ)), g = ∂L/∂y.
    ``mean`` and ``rstd`` (from :func:`layer_norm_jvp`) save recomputing the statistics.
    """
    zs = z.unflatten(-1, (-1, size))
    if mean is None or rstd is None:
        _, mean, rstd = torch.native_layer_norm(zs, (size,), None, None, EPS)
    return _norm_backward(grad_y.unflatten(-1, (-1, size)), zs, size, mean, rstd).flatten(-2)


# --------------------------------------------------------------------------- linear layers


class DenseLinear(nn.Linear):
    """Channel mixing: z_{b,p} = W h_{b,p} + c for every token, W of shape (C_out, C_in).

    Its output channels are split into ``groups`` groups (for the group-wise losses).
    """

    def __init__(self, in_features: int, out_features: int, groups: int = 1) -> None:
        super().__init__(in_features, out_features)
        if out_features % groups:
            raise ValueError(f"{groups} groups do not divide {out_features} output channels")
        self.groups = groups

    def input_tangent(self, dh: Tensor) -> Tensor:
        """ż = W ḣ: the output tangent caused by an input tangent (weights fixed)."""
        return F.linear(dh, self.weight)

    def weight_tangent(self, h: Tensor, dw: Tensor | LowRank, db: Tensor) -> Tensor:
        """ż = Ẇ h + ċ: the output tangent caused by a weight tangent (input fixed); a low-rank
        Ẇ = A Bᵀ/√r costs r (C_in + C_out) per token instead of C_in C_out."""
        if isinstance(dw, LowRank):
            return dw.apply(h).add_(db)
        return F.linear(h, dw, db)

    def param_grads(self, h: Tensor, grad_z: Tensor) -> tuple[Tensor, Tensor]:
        """(∂L/∂W, ∂L/∂c) = (Σ_{b,p} g_{b,p} h_{b,p}ᵀ, Σ_{b,p} g_{b,p}) for g = ∂L/∂z."""
        g = grad_z.reshape(-1, self.out_features)
        return g.T @ h.reshape(-1, self.in_features), g.sum(0)

    def perturbation_scale(self, dd: Tensor) -> tuple[Tensor, Tensor]:
        """Per-entry factors of the weight tangent for local directional derivatives dd (B, P, G):
        output channel c of group g gets Σ_{b,p} dd_{b,p,g}."""
        per_group = dd.sum((0, 1))
        per_channel = per_group.repeat_interleave(self.out_features // self.groups)
        return per_channel[:, None], per_channel


class GroupLinear(nn.Module):
    """Grouped channel mixing: G independent maps, z_{b,p,g} = W_g h_{b,p,g} + c_g.

    ``weight`` has shape (G, D_out, D_in) and ``bias`` (G, D_out); the input and output are
    (B, P, G·D).
    """

    def __init__(self, channels: int, groups: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        if channels % groups or out_channels % groups:
            raise ValueError(f"{groups} groups do not divide {channels} → {out_channels} channels")
        self.groups = groups
        self.in_size = channels // groups
        self.out_size = out_channels // groups
        self.weight = nn.Parameter(torch.empty(groups, self.out_size, self.in_size))
        self.bias = nn.Parameter(torch.empty(groups, self.out_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights N(0, 1/D_in), biases 0."""
        nn.init.normal_(self.weight, std=1 / math.sqrt(self.in_size))
        nn.init.zeros_(self.bias)

    def _map(self, h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        hg = h.unflatten(-1, (self.groups, self.in_size))
        z = torch.einsum("bpgi,goi->bpgo", hg, weight)
        return (z if bias is None else z + bias).flatten(-2)

    def forward(self, h: Tensor) -> Tensor:
        return self._map(h, self.weight, self.bias)

    def input_tangent(self, dh: Tensor) -> Tensor:
        """ż_g = W_g ḣ_g."""
        return self._map(dh, self.weight, None)

    def weight_tangent(self, h: Tensor, dw: Tensor, db: Tensor) -> Tensor:
        """ż_g = Ẇ_g h_g + ċ_g."""
        return self._map(h, dw, db)

    def param_grads(self, h: Tensor, grad_z: Tensor) -> tuple[Tensor, Tensor]:
        """(∂L/∂W_g, ∂L/∂c_g) = (Σ_{b,p} g_{b,p,g} h_{b,p,g}ᵀ, Σ_{b,p} g_{b,p,g})."""
        g = grad_z.reshape(-1, self.groups, self.out_size)
        hg = h.reshape(-1, self.groups, self.in_size)
        return torch.einsum("ngo,ngi->goi", g, hg), g.sum(0)

    def perturbation_scale(self, dd: Tensor) -> tuple[Tensor, Tensor]:
        """Group g's weights get Σ_{b,p} dd_{b,p,g}."""
        per_group = dd.sum((0, 1))
        return per_group[:, None, None], per_group[:, None]

    def extra_repr(self) -> str:
        return f"groups={self.groups}, {self.in_size} → {self.out_size} per group"


class TokenLinear(nn.Module):
    """Token mixing: z_{b,q,c} = Σ_p W_{q,p} h_{b,p,c} + c_q, W of shape (P, P), for every channel."""

    def __init__(self, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.weight = nn.Parameter(torch.empty(tokens, tokens))
        self.bias = nn.Parameter(torch.empty(tokens))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights N(0, 1/P), biases 0."""
        nn.init.normal_(self.weight, std=1 / math.sqrt(self.tokens))
        nn.init.zeros_(self.bias)

    def forward(self, h: Tensor) -> Tensor:
        return torch.matmul(self.weight, h) + self.bias[:, None]

    def input_tangent(self, dh: Tensor) -> Tensor:
        """ż = W ḣ (mixing the tangent's tokens)."""
        return torch.matmul(self.weight, dh)

    def weight_tangent(self, h: Tensor, dw: Tensor | LowRank, db: Tensor) -> Tensor:
        """ż = Ẇ h + ċ (a low-rank Ẇ = A Bᵀ/√r as A (Bᵀ h)/√r)."""
        if isinstance(dw, LowRank):
            return torch.matmul(dw.left, torch.matmul(dw.right.T, h)).div_(dw.rank**0.5).add_(db[:, None])
        return torch.matmul(dw, h) + db[:, None]

    def param_grads(self, h: Tensor, grad_z: Tensor) -> tuple[Tensor, Tensor]:
        """(∂L/∂W, ∂L/∂c) = (Σ_{b,c} g_{b,q,c} h_{b,p,c}, Σ_{b,c} g_{b,q,c})."""
        return torch.einsum("bqc,bpc->qp", grad_z, h), grad_z.sum((0, 2))

    def perturbation_scale(self, dd: Tensor) -> tuple[Tensor, Tensor]:
        """Row q (output token q) gets Σ_{b,g} dd_{b,q,g}: token q reaches only patch q's losses."""
        per_token = dd.sum((0, 2))
        return per_token[:, None], per_token

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}"


Linear = DenseLinear | GroupLinear | TokenLinear


# --------------------------------------------------------------------------- tracing


@dataclass
class Site:
    """One perturbed activity: what the activity-perturbation step needs about a unit.

    ``h`` is the unit's (normalised) input, ``z`` the linear output before the post-norm, ``u``
    the tangent added after the norm, ``mask`` the ReLU's active units, all primal tensors of
    shape (B, P, C); ``block`` is the block index. ``mean`` and ``rstd`` (the segment statistics
    of z) are kept by the hand-written engine for the backward step through the norm.
    ``unit.scope`` says which local losses an entry reaches.
    """

    unit: Unit
    block: int
    h: Tensor
    z: Tensor
    u: Tensor
    mask: Tensor | None = None  # 1 where the ReLU is active, 0 elsewhere
    mean: Tensor | None = None
    rstd: Tensor | None = None


@dataclass
class Trace:
    """How a :class:`LocalMixer` forward pass runs, and what it records.

    Args:
        local: cut every block's input, and the final head's input, from the graph (the
            stop-gradient of local losses; in forward mode the tangent is dropped).
        tangents: a tangent source ``tangents(shape) -> Tensor``: each unit adds a tangent drawn
            from it after its post-norm (activity perturbation) and records a :class:`Site`.
        additive: add the drawn tensors to the activities as they are, instead of as forward-mode
            tangents (zeros that require grad then give, by autograd, the losses' gradients with
            respect to the activities).

    After the pass, ``blocks`` holds every block's output (B, P, C) (dual numbers under
    :mod:`torch.autograd.forward_ad`), ``block_tangents`` their tangents when the pass ran with
    :func:`tangent_forward`, and ``sites`` the perturbed units in the order they ran.
    """

    local: bool = False
    tangents: Callable[[torch.Size], Tensor] | None = None
    additive: bool = False
    blocks: list[Tensor] = field(default_factory=list)
    block_tangents: list[Tensor | None] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)


def _primal(x: Tensor) -> Tensor:
    return fwAD.unpack_dual(x).primal


def _cut(x: Tensor) -> Tensor:
    """A stop-gradient for both modes: no autograd history and no forward-mode tangent."""
    return _primal(x).detach()


#: A weight tangent for one layer: (Ẇ, ċ) shaped like (weight, bias); Ẇ may be low-rank.
WeightTangent = tuple["Tensor | LowRank", Tensor]


class Unit(nn.Module):
    """norm → linear → norm → (+ residual) → ReLU; see the module docstring.

    Args:
        linear: the :class:`DenseLinear`, :class:`GroupLinear` or :class:`TokenLinear` layer.
        pre, post: the segment sizes of the layer norms before and after ``linear``.
        residual: add the block's input before the ReLU.
        scope: ``"group"`` or ``"patch"``, the local losses an output entry reaches.
    """

    def __init__(self, linear: Linear, pre: int, post: int, *, residual: bool, scope: Literal["group", "patch"]) -> None:
        super().__init__()
        self.linear = linear
        self.pre = pre
        self.post = post
        self.residual = residual
        self.scope = scope

    def forward(self, x: Tensor, block_input: Tensor | None = None, trace: Trace | None = None, block: int = 0) -> Tensor:
        h = layer_norm(x, self.pre)
        z = self.linear(h)
        y = layer_norm(z, self.post)
        site = None
        if trace is not None and trace.tangents is not None:
            u = trace.tangents(y.shape)
            if trace.additive:
                y = y + u
            else:
                primal, tangent = fwAD.unpack_dual(y)
                y = fwAD.make_dual(primal, u if tangent is None else tangent + u)
            site = Site(self, block, _primal(h).detach(), _primal(z).detach(), u)
            trace.sites.append(site)
        if self.residual:
            if block_input is None:
                raise ValueError("a residual unit needs the block's input")
            y = y + block_input
        out = F.relu(y)
        if site is not None:
            site.mask = _primal(out).detach().sign()
        return out

    def jvp(
        self,
        x: Tensor,
        dx: Tensor | None,
        block_input: Tensor,
        block_tangent: Tensor | None,
        trace: Trace,
        block: int,
        weight_tangent: WeightTangent | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """The unit's output and its tangent, by the chain rule written out (no autograd):
        ḣ = norm'(x) ẋ, ż = W ḣ + Ẇ h + ċ, ẏ = norm'(z) ż (+ u), out' = ẏ ⊙ [y > 0]."""
        h, dh, _, _ = layer_norm_jvp(x, dx, self.pre)
        z = self.linear(h)
        dz = self.linear.input_tangent(dh) if dh is not None else None
        if weight_tangent is not None:
            extra = self.linear.weight_tangent(h, *weight_tangent)
            dz = extra if dz is None else dz.add_(extra)
        y, dy, mean, rstd = layer_norm_jvp(z, dz, self.post)
        site = None
        if trace.tangents is not None:
            u = trace.tangents(y.shape)
            dy = u if dy is None else dy.add_(u)
            site = Site(self, block, h, z, u, mean=mean, rstd=rstd)
            trace.sites.append(site)
        if self.residual:
            y = y + block_input
            if block_tangent is not None:
                dy = block_tangent if dy is None else dy + block_tangent
        out = y.relu_()
        mask = out.sign()  # 1 where the ReLU is active, else 0 (a float mask: bool ones are slow on CPUs)
        if site is not None:
            site.mask = mask
        return out, (dy.mul_(mask) if dy is not None else None)

    def extra_repr(self) -> str:
        return f"pre_norm={self.pre}, post_norm={self.post}, residual={self.residual}, scope={self.scope!r}"


class MixerBlock(nn.ModuleList):
    """The units of one block, run in order; the last adds the block's input if it is residual."""

    def forward(self, x: Tensor, trace: Trace | None = None, block: int = 0) -> Tensor:  # type: ignore[override]
        out = x
        for unit in self:
            out = unit(out, x, trace, block)
        return out


# --------------------------------------------------------------------------- the network


class LocalMixer(nn.Module):
    """A LocalMixer (Ren et al. 2023) for images of shape ``image_shape`` = (channels, H, W).

    Args:
        arch: a name of :data:`VARIANTS` (``"S/1/1"``, ``"M/1/16"``, ``"M/8/16"``, ``"L/8/64"``)
            or a :class:`MixerConfig`.
        image_shape: (channels, height, width) of the input; MNIST's (1, 28, 28) by default.
        classes: the number of classes.

    ``model(x)`` returns the final head's logits for images ``x`` (B, channels, H, W);
    ``model(x, trace=Trace(...))`` also records the block outputs (and, with a tangent source,
    the perturbed sites). :meth:`block_loss` and :meth:`head_features` give the local
    objectives. Backbone weights start N(0, 1/fan-in), biases 0, the heads at 0.

    Raises ``ValueError`` for an unknown name, a patch count that does not divide the image
    sides, or channels that the groups do not divide.
    """

    def __init__(self, arch: str | MixerConfig = "M/1/16", image_shape: tuple[int, int, int] = (1, 28, 28), classes: int = 10) -> None:
        super().__init__()
        cfg = _config(arch)
        if len(image_shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in image_shape):
            raise ValueError(f"image_shape must be (channels, height, width) of positive ints, got {image_shape!r}")
        ch, height, width = image_shape
        if height % cfg.patches or width % cfg.patches:
            raise ValueError(
                f"{cfg.patches} patches per side do not divide the {height} × {width} image "
                f"(patch sides must be whole pixels)"
            )
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
            raise ValueError(f"classes must be an int >= 2, got {classes!r}")
        self.config = cfg
        self.image_shape = (ch, height, width)
        self.classes = classes
        self.tokens = cfg.patches**2
        self.patch_dim = ch * (height // cfg.patches) * (width // cfg.patches)
        c, g = cfg.channels, cfg.groups
        d = c // g
        blocks = []
        for b in range(cfg.blocks):
            units = []
            if b == 0:
                units.append(Unit(DenseLinear(self.patch_dim, c, g), self.patch_dim, c, residual=False, scope="group"))
            else:
                units.append(Unit(TokenLinear(self.tokens), c, c, residual=False, scope="patch"))
                units.append(Unit(DenseLinear(c, c, g), c, c, residual=False, scope="group"))
            units.append(Unit(GroupLinear(c, g), d, d, residual=b > 0, scope="group"))
            blocks.append(MixerBlock(units))
        self.blocks = nn.ModuleList(blocks)
        self.block_heads = nn.ModuleList(nn.Linear(c, classes) for _ in range(cfg.blocks))
        self.head = nn.Linear(c, classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Backbone: weights N(0, 1/fan-in), biases 0; heads: 0."""
        for unit in self.units():
            lin = unit.linear
            if isinstance(lin, DenseLinear):
                nn.init.normal_(lin.weight, std=1 / math.sqrt(lin.in_features))
                nn.init.zeros_(lin.bias)
            else:
                lin.reset_parameters()
        for head in (*self.block_heads, self.head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    # ----------------------------------------------------------------------- structure

    @property
    def arch(self) -> str:
        """Ren et al.'s name of this shape (see :attr:`MixerConfig.name`)."""
        return self.config.name

    @property
    def groups(self) -> int:
        return self.config.groups

    def units(self) -> Iterator[Unit]:
        """Every unit, block by block."""
        for block in self.blocks:
            yield from block  # type: ignore[misc]

    def backbone_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the blocks (the heads excluded), in ``named_parameters`` order."""
        return [(n, p) for n, p in self.named_parameters() if n.startswith("blocks.")]

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of the block heads and the final head."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("blocks.")]

    # ----------------------------------------------------------------------- forward

    def patchify(self, x: Tensor) -> Tensor:
        """Images (B, channels, H, W) -> tokens (B, P, d), patches in row-major order."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"LocalMixer for images {self.image_shape} got input of shape {tuple(x.shape)}")
        b, ch, height, width = x.shape
        s = self.config.patches
        ph, pw = height // s, width // s
        t = x.reshape(b, ch, s, ph, s, pw).permute(0, 2, 4, 3, 5, 1)
        return t.reshape(b, s * s, ph * pw * ch)

    def forward(self, x: Tensor, *, trace: Trace | None = None) -> Tensor:
        h = self.patchify(x)
        local = trace is not None and trace.local
        for index, block in enumerate(self.blocks):
            if local:
                h = _cut(h)
            h = block(h, trace, index)
            if trace is not None:
                trace.blocks.append(h)
        if local:
            h = _cut(h)
        return self.head(self.head_features(h))

    def head_features(self, h: Tensor) -> Tensor:
        """The final head's input: the layer-normed spatial average of the last block, (B, C)."""
        return layer_norm(token_mean(h), h.shape[-1])

    def block_features(self, h: Tensor) -> Tensor:
        """A block head's input before the spatial average: each group of h normalised, (B, P, C)."""
        return layer_norm(h, self.config.channels // self.config.groups)

    def block_logits(self, index: int, h: Tensor) -> Tensor:
        """Block head ``index`` on the spatial average of :meth:`block_features` (h)."""
        return self.block_heads[index](token_mean(self.block_features(h)))


@torch.no_grad()
def tangent_forward(
    model: LocalMixer,
    x: Tensor,
    *,
    local: bool,
    tangents: Callable[[torch.Size], Tensor] | None = None,
    weight_tangents: dict[nn.Module, WeightTangent] | None = None,
) -> Trace:
    """One forward-mode pass through the blocks with hand-written JVP rules (:meth:`Unit.jvp`).

    Tangents enter as activity tangents (``tangents``, added after each unit's post-norm) and/or
    weight tangents (``weight_tangents``: layer -> (Ẇ, ċ)). Every block's output and its tangent
    go to ``trace.blocks`` and ``trace.block_tangents``; with ``local`` the tangent is dropped
    between blocks. Computes what :mod:`torch.autograd.forward_ad` computes through
    :meth:`LocalMixer.forward` (the tests check it), at the cost of the plain operations.
    """
    trace = Trace(local=local, tangents=tangents)
    weight_tangents = weight_tangents or {}
    h, dh = model.patchify(x), None
    for index, block in enumerate(model.blocks):
        if local:
            dh = None
        h0, dh0 = h, dh
        for unit in block:
            h, dh = unit.jvp(h, dh, h0, dh0, trace, index, weight_tangents.get(unit.linear))
        trace.blocks.append(h)
        trace.block_tangents.append(dh)
    return trace


def parameter_count(arch: str | MixerConfig, image_shape: tuple[int, int, int] = (1, 28, 28), classes: int = 10) -> int:
    """The number of parameters of a LocalMixer (heads included), without building it."""
    cfg = _config(arch)
    ch, height, width = image_shape
    if height % cfg.patches or width % cfg.patches:
        raise ValueError(f"{cfg.patches} patches per side do not divide the {height} × {width} image")
    d_in = ch * (height // cfg.patches) * (width // cfg.patches)
    c, g, p = cfg.channels, cfg.groups, cfg.patches**2
    group = c * c // g + c
    count = d_in * c + c + group
    count += (cfg.blocks - 1) * (p * p + p + c * c + c + group)
    count += (cfg.blocks + 1) * (c * classes + classes)
    return count
