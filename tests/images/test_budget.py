"""The edge CPU image's size budget (issue 13): at most 300 MB with its Debian base.
Sizes and build times are recorded in docs/benchmarks.md ("Container images")."""

from __future__ import annotations

EDGE_BUDGET_MB = 300.0


def test_edge_image_fits_its_budget(built_images: list[dict[str, object]]) -> None:
    edge = next(r for r in built_images if r["image"] == "edge-cpu")
    size = float(edge["size_mb"])  # type: ignore[arg-type]
    assert size <= EDGE_BUDGET_MB, (
        f"edge-cpu image is {size:.1f} MB, over its {EDGE_BUDGET_MB:.0f} MB budget: see "
        "what grew with `podman run --rm ghcr.io/edgecloud/edge-agent:0.1.0 du -sm "
        "/opt/edgecloud/lib/python3.11/site-packages/*` (docs/benchmarks.md)"
    )
