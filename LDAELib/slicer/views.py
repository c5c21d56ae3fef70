"""What the slice views and the Sequences toolbar show after a run, and which slices are on screen.

Uses the application's objects passed in (the layout manager, the Sequences module) and Slicer's
``slicer.util.setSliceViewerLayers``; no Qt of its own.
"""

from __future__ import annotations

import slicer

from .nodes import visible_region


def show_results(job, sequences=None) -> None:
    """Show a finished job: an interpolation's sequence in the Sequences toolbar (``sequences``: the
    Sequences module; ``showSequenceBrowser`` selects the browser and shows the toolbar, which Slicer
    creates hidden), else its first volume with its difference or spread map as a coloured overlay."""
    volumes = [n for n in job.nodes if n.IsA("vtkMRMLScalarVolumeNode")]
    browser = next((n for n in job.nodes if n.IsA("vtkMRMLSequenceBrowserNode")), None)
    if browser is not None:
        if sequences is not None:
            sequences.showSequenceBrowser(browser)
        slicer.util.setSliceViewerLayers(background=browser.GetProxyNode(browser.GetMasterSequenceNode()), fit=True)
    elif volumes:
        overlay = next((n for n in volumes if n.GetAttribute("LDAE.Operation") in ("difference", "spread")), None)
        base = next((n for n in volumes if n is not overlay), volumes[0])
        slicer.util.setSliceViewerLayers(background=base, foreground=overlay, foregroundOpacity=0.5 if overlay else 0.0)


def slices_on_screen(layout_manager) -> dict | None:
    """The axial, coronal and sagittal slices shown in the layout, as a preview region
    (``nodes.visible_region``); None when no such view is shown."""
    if layout_manager is None:
        return None
    widgets = [layout_manager.sliceWidget(name) for name in layout_manager.sliceViewNames()]
    return visible_region([w.mrmlSliceNode() for w in widgets if w is not None and w.isVisible()])
