"""Feature browser: one `FeatureCard` per (SAE, latent), rendered as static HTML or an ipywidgets panel.

What goes on a card, and how it is gathered, is helpers.report.feature_card; this module only
shows cards. `render_feature_html` gives a self-contained page (inline CSS + inline SVG, no JS): tokens are
highlighted with alpha = activation / card max and carry title="act=..." hover text.
`FeatureBrowser` is the same card in a widget panel; it builds and updates without a frontend.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from helpers.report.chromium import OFFLINE_FLAGS, find_chromium
from helpers.report.feature_card import FeatureCard

HIGHLIGHT_RGB = (255, 102, 0)
WHITESPACE_GLYPHS = {"\n": "⏎", "\r": "␍", "\t": "⇥"}


# ---------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}
.card h2{margin:.2em 0}.meta{color:#555;margin-bottom:.6em}
.ctx{font-family:ui-monospace,monospace;font-size:13px;line-height:1.9;margin:2px 0;white-space:nowrap}
.tok{white-space:pre;border-radius:2px;padding:1px 0}
.tok.anchor{outline:1px solid #c33}
.val{display:inline-block;width:5.5em;color:#777;text-align:right;margin-right:.6em}
.chip{font-family:ui-monospace,monospace;white-space:pre;padding:1px 4px;margin:2px;border-radius:3px;
display:inline-block}
.pos{background:#d8f0d8}.neg{background:#f6d6d6}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.plots svg{margin-right:1.5em;vertical-align:top}
"""


def _visible(text: str) -> str:
    """HTML-escaped token text with newlines/tabs shown as glyphs (spaces kept via white-space:pre)."""
    for ch, glyph in WHITESPACE_GLYPHS.items():
        text = text.replace(ch, glyph)
    return html.escape(text, quote=True)


def token_span(text: str, act: float, max_act: float, anchor: bool = False) -> str:
    """<span> with background alpha = clip(act / max_act, 0, 1) and title="act=<6 sig. digits>"."""
    alpha = 0.0 if not (max_act > 0 and np.isfinite(act)) else float(np.clip(act / max_act, 0.0, 1.0))
    r, g, b = HIGHLIGHT_RGB
    cls = "tok anchor" if anchor else "tok"
    return (
        f'<span class="{cls}" style="background-color:rgba({r},{g},{b},{alpha:.3f})" '
        f'title="act={act:.6g}">{_visible(text)}</span>'
    )


def _svg_bars(counts, edges, width=260, height=110, title="nonzero activations") -> str:
    counts = np.asarray(counts, dtype=np.float64)
    n = len(counts)
    top = max(np.log1p(counts).max(), 1e-9)
    bw = width / max(n, 1)
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{height - 14 - h:.1f}" width="{bw * 0.9:.1f}" height="{h:.1f}" '
        'fill="#4c72b0">'
        f"<title>[{edges[i]:.4g}, {edges[i + 1]:.4g}): {int(c)}</title></rect>"
        for i, (c, h) in enumerate(zip(counts, np.log1p(counts) / top * (height - 30)))
    )
    return (
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f'<text x="0" y="10" font-size="10">{html.escape(title)} (log count)</text>{bars}'
        f'<text x="0" y="{height - 2}" font-size="9">{edges[0]:.3g}</text>'
        f'<text x="{width}" y="{height - 2}" font-size="9" text-anchor="end">{edges[-1]:.3g}</text></svg>'
    )


def _svg_profile(profile, width=260, height=110) -> str:
    p = np.nan_to_num(np.asarray(profile, dtype=np.float64))
    lo, hi = p.min(), p.max()
    span = hi - lo if hi > lo else 1.0
    xs = np.linspace(2, width - 2, len(p)) if len(p) > 1 else np.array([width / 2])
    ys = height - 14 - (p - lo) / span * (height - 30)
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.6" fill="#dd8452"><title>pos {i}: {v:.4g}</title></circle>'
        for i, (x, y, v) in enumerate(zip(xs, ys, p))
    )
    return (
        f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
        f'<text x="0" y="10" font-size="10">mean activation by position</text>'
        f'<polyline points="{pts}" fill="none" stroke="#dd8452"/>{dots}'
        f'<text x="0" y="{height - 2}" font-size="9">0</text>'
        f'<text x="{width}" y="{height - 2}" font-size="9" text-anchor="end">{len(p) - 1}</text></svg>'
    )


def render_feature_body(card: FeatureCard, tokenizer_decode: Callable, include_plots: bool = True) -> str:
    """The card as an HTML fragment (the widget shows this; `render_feature_html` wraps it)."""
    max_act = card.max_activation
    info = "".join(f" · {html.escape(str(k))}: {html.escape(str(v))}" for k, v in card.info.items())
    parts = [
        f'<div class="card"><h2>{html.escape(card.sae_name)} · feature {card.feature}</h2>',
        f'<div class="meta">density {card.density:.3e} · max activation {max_act:.4g}{info}</div>',
    ]
    if include_plots and (card.hist_counts is not None or card.position_profile is not None):
        parts.append('<div class="plots">')
        if card.hist_counts is not None:
            parts.append(_svg_bars(card.hist_counts, card.hist_edges))
        if card.position_profile is not None:
            parts.append(_svg_profile(card.position_profile))
        parts.append("</div>")
    if card.logit_lens is not None:
        for label, items, cls in (
            ("promoted", card.logit_lens.promoted, "pos"),
            ("suppressed", card.logit_lens.suppressed, "neg"),
        ):
            chips = "".join(
                f'<span class="chip {cls}" title="logit={v:.4g} id={i}">{_visible(t)}</span>'
                for t, i, v in items
            )
            parts.append(f"<div><b>{label}:</b> {chips}</div>")
    if card.matches:
        rows = "".join(
            f"<tr><td>{html.escape(str(s))}</td><td>{int(f)}</td><td>{c:.3f}</td></tr>"
            for s, f, c in card.matches
        )
        parts.append(
            f"<h3>best matches</h3><table><tr><th>SAE</th><th>latent</th><th>cosine</th></tr>{rows}</table>"
        )
    if card.effects is not None:
        parts.append(_effects_html(card.effects))
    parts.append(f"<h3>top contexts ({len(card.contexts)})</h3>")
    for c in card.contexts:
        spans = "".join(
            token_span(tokenizer_decode([int(t)]), float(a), max_act, anchor=(j == c.target))
            for j, (t, a) in enumerate(zip(c.tokens, c.acts))
        )
        parts.append(
            f'<div class="ctx" title="seq {c.seq_id}, pos {c.position}">'
            f'<span class="val">{c.value:.4g}</span>{spans}</div>'
        )
    parts.append("</div>")
    return "".join(parts)


def _effects_html(e) -> str:
    """Ablation effect and steering preview of a card (helpers.analysis.interventions.FeatureEffects)."""
    rises = "".join(
        f'<tr><td class="ctx">{_visible(c)}</td><td class="ctx">{_visible(t)}</td><td>+{d:.2f}</td></tr>'
        for c, t, d in e.rises
    )
    steer = "".join(
        f'<tr><td>{html.escape(name)}</td><td class="ctx">{_visible(text)}</td></tr>'
        for name, text in e.steering
    )
    return (
        f"<h3>ablation (latent zeroed, SAE error kept)</h3>"
        f'<div class="meta">mean change of next-token loss: {e.mean_fired:+.3f} nats where it fired, '
        f"{e.mean_elsewhere:+.3f} elsewhere</div>"
        f"<table><tr><th>context</th><th>next token</th><th>loss rise</th></tr>{rises}</table>"
        '<h3>steering preview</h3><div class="meta">prompt: <span '
        f'class="ctx">{_visible(e.prompt)}</span></div>'
        f"<table><tr><th>edit</th><th>greedy continuation</th></tr>{steer}</table>"
    )


def render_feature_html(card: FeatureCard, tokenizer_decode: Callable) -> str:
    """A self-contained static page (inline CSS + SVG, no JS) for one card."""
    title = html.escape(f"{card.sae_name} feature {card.feature}")
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body>{render_feature_body(card, tokenizer_decode)}</body></html>"
    )


def page_name(sae_name: str, feature: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', sae_name)}_f{feature:06d}.html"


def _svg_atlas(coords, density, hrefs: Mapping[int, str], name: str, size: int = 520) -> str:
    """Scatter of one SAE's embedding; <title> tooltips, linked points for features with pages."""
    from matplotlib import colormaps, colors  # noqa: PLC0415

    xy = np.asarray(coords, dtype=np.float64)
    span = np.ptp(xy, axis=0)
    xy = 8 + (xy - xy.min(0)) / np.where(span > 0, span, 1.0) * (size - 16)
    if density is None:
        fill = ["#4c72b0"] * len(xy)
    else:
        d = np.asarray(density, dtype=np.float64)
        pos = d[d > 0]
        norm = colors.LogNorm(pos.min(), pos.max()) if pos.size and pos.max() > pos.min() else None
        rgba = colormaps["viridis"](norm(np.where(d > 0, d, np.nan)) if norm else np.full(len(d), 0.5))
        rgba[d <= 0] = (0.8, 0.8, 0.8, 1.0)
        fill = [colors.to_hex(c) for c in rgba]
    circles = []
    for f, ((x, y), c) in enumerate(zip(xy, fill)):
        tip = f"{name} #{f}" + ("" if density is None else f" density={density[f]:.3g}")
        dot = (
            f'<circle cx="{x:.1f}" cy="{size - y:.1f}" r="{3.5 if f in hrefs else 1.8}" '
            f'fill="{c}"><title>{html.escape(tip)}</title></circle>'
        )
        circles.append(f'<a href="{html.escape(hrefs[f])}">{dot}</a>' if f in hrefs else dot)
    return (
        f'<h3>{html.escape(name)}</h3><svg width="{size}" height="{size}" xmlns="http://www.w3.org/2000/svg" '
        f'style="border:1px solid #ddd">{"".join(circles)}</svg>'
    )


def pages_to_export(first: Sequence[int], fire_counts, n_spread: int = 11) -> list[int]:
    """The latents to export pages for: `first` (e.g. the rule-picked ones), then n_spread latents spread
    evenly over the firing ones ordered by fire count, most frequent first (`fire_counts` [d_sae]; a
    latent already in `first` is not repeated, so fewer may come back)."""
    counts = np.asarray(fire_counts)
    alive = np.flatnonzero(counts > 0)
    order = alive[np.argsort(-counts[alive], kind="stable")]
    spread = order[:: max(1, len(order) // n_spread)][:n_spread]
    first = [int(f) for f in first]
    return first + [int(f) for f in spread if int(f) not in first]


def export_feature_pages(
    cards: Sequence[FeatureCard],
    out_dir,
    tokenizer_decode: Callable,
    atlas: Mapping[str, object] | None = None,
    atlas_density: Mapping[str, object] | None = None,
) -> Path:
    """Write one page per card plus index.html (table, optional atlas scatter per SAE); returns the index
    path.

    atlas: {sae name: coords [d_sae, 2]}; points of features with a page link to it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, links = [], {}
    for card in cards:
        name = page_name(card.sae_name, card.feature)
        (out / name).write_text(render_feature_html(card, tokenizer_decode), encoding="utf-8")
        links.setdefault(card.sae_name, {})[card.feature] = name
        top_tok = (
            _visible(card.logit_lens.promoted[0][0]) if card.logit_lens and card.logit_lens.promoted else ""
        )
        rows.append(
            f"<tr><td>{html.escape(card.sae_name)}</td><td><a "
            f'href="{html.escape(name)}">{card.feature}</a></td>'
            f"<td>{card.density:.3e}</td><td>{card.max_activation:.4g}</td><td>{top_tok}</td></tr>"
        )
    svgs = "".join(
        _svg_atlas(xy, (atlas_density or {}).get(s), links.get(s, {}), s) for s, xy in (atlas or {}).items()
    )
    index = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>feature pages</title><style>{_CSS}</style>'
        f"</head><body><h2>Features ({len(rows)})</h2>{svgs}<table><tr><th>SAE</th><th>feature</th>"
        f"<th>density</th><th>max act</th><th>top promoted</th></tr>{''.join(rows)}</table></body></html>"
    )
    (out / "index.html").write_text(index, encoding="utf-8")
    return out / "index.html"


# ---------------------------------------------------------------- widget
def _n_features(provider) -> int | None:
    for attr in ("n_features", "__len__"):
        if hasattr(provider, attr):
            v = getattr(provider, attr)
            return int(v() if callable(v) else v)
    return None


class FeatureBrowser:
    """ipywidgets panel: SAE dropdown + feature id -> card HTML and a small matplotlib figure.

    providers: {sae name: callable(feature) -> FeatureCard, or an object with .card(feature)}
    (e.g. `CardSource`). Cards are cached. Display the browser itself or `.widget` in a notebook.
    """

    def __init__(
        self,
        providers: Mapping[str, object],
        tokenizer_decode: Callable,
        show_plots: bool = True,
        cache_size: int = 128,
    ):
        import ipywidgets as w  # noqa: PLC0415 - only the browser needs it

        if not providers:
            raise ValueError(
                "providers is empty; pass {sae name: CardSource or callable(feature) -> FeatureCard}"
            )
        self.providers = dict(providers)
        self.decode = tokenizer_decode
        self.show_plots = show_plots
        self._cache: dict = {}
        self._cache_size = cache_size
        self._muted = False
        self.sae = w.Dropdown(options=list(self.providers), description="SAE")
        self.feature = w.BoundedIntText(value=0, min=0, max=2**31 - 1, description="feature")
        self.prev, self.next = (
            w.Button(description="◀", layout={"width": "3em"}),
            w.Button(description="▶", layout={"width": "3em"}),
        )
        self.html = w.HTML()
        self.plots = w.Output()
        self.widget = w.VBox(
            [w.HBox([self.sae, self.feature, self.prev, self.next]), w.HBox([self.html, self.plots])]
        )
        self.sae.observe(self._on_sae, names="value")
        self.feature.observe(lambda _: self.refresh(), names="value")
        self.prev.on_click(lambda _: self._step(-1))
        self.next.on_click(lambda _: self._step(+1))
        self._on_sae(None)

    def card(self, sae: str, feature: int) -> FeatureCard:
        key = (sae, int(feature))
        if key not in self._cache:
            if sae not in self.providers:
                raise ValueError(f"unknown SAE {sae!r}; choose one of {list(self.providers)}")
            p = self.providers[sae]
            self._cache[key] = p.card(int(feature)) if hasattr(p, "card") else p(int(feature))
            if len(self._cache) > self._cache_size:
                self._cache.pop(next(iter(self._cache)))
        return self._cache[key]

    def show(self, sae: str, feature: int) -> None:
        """Select (sae, feature) programmatically (e.g. from an atlas pick); one refresh."""
        if sae not in self.providers:
            raise ValueError(f"unknown SAE {sae!r}; choose one of {list(self.providers)}")
        self._muted = True
        try:
            self.sae.value = sae
            self.feature.value = int(feature)
        finally:
            self._muted = False
        self.refresh()

    def _on_sae(self, _change) -> None:
        n = _n_features(self.providers[self.sae.value])
        self.feature.max = (n - 1) if n else 2**31 - 1
        self.refresh()

    def _step(self, delta: int) -> None:
        self.feature.value = int(np.clip(self.feature.value + delta, self.feature.min, self.feature.max))

    def refresh(self) -> None:
        """Rebuild the HTML and plots for the current selection (errors are shown, not raised)."""
        if self._muted:
            return
        try:
            card = self.card(self.sae.value, self.feature.value)
        except Exception as exc:  # noqa: BLE001 - a widget callback must not die silently
            self.html.value = f"<pre>cannot build card: {html.escape(repr(exc))}</pre>"
            self.plots.outputs = ()
            return
        self.html.value = f"<style>{_CSS}</style>" + render_feature_body(
            card, self.decode, include_plots=False
        )
        if self.show_plots:
            from helpers.report.plots.umap_views import plot_feature_card  # noqa: PLC0415

            fig = plot_feature_card(card)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=72)
            png = base64.b64encode(buf.getvalue()).decode("ascii")
            # set outputs directly: works with and without a kernel/frontend
            self.plots.outputs = (
                {
                    "output_type": "display_data",
                    "metadata": {},
                    "data": {"image/png": png, "text/plain": f"<card plots {card.feature}>"},
                },
            )

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def screenshot(
    html_path, png_path, width: int = 1100, height: int = 1400, chromium: str | None = None
) -> Path:
    """Render a local HTML file to PNG with headless Chromium (Debian: apt-get install chromium).

    Flags keep Chromium off the network and out of the user's profile (helpers.report.chromium)."""
    import subprocess
    import tempfile

    exe = find_chromium(chromium)
    png_path = Path(png_path).resolve()
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                exe,
                "--headless",
                *OFFLINE_FLAGS,
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png_path}",
                Path(html_path).resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return png_path
