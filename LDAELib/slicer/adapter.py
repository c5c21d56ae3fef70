"""MRML nodes in, MRML nodes out: the LDAE operations as the Slicer module offers them.

    adapter = LDAESlicerAdapter(model_path)            # the worker starts on first use
    node = adapter.edit(volumeNode, "cn", 2.0)         # waits; returns the new volume node
    nodes = adapter.interpolate(nodeA, nodeB, [0.25, 0.5, 0.75])
    job = adapter.start_edit(volumeNode, "cn", [2.0])  # GUI: returns at once ...
    job.poll()                                         # ... and a QTimer polls (main thread only)

The adapter writes each source volume once (per content) as NIfTI into its temporary folder,
sends requests to the warm worker process (``client``), and turns the worker's output files into
new scalar volume nodes beside the source (``nodes``): same IJK-to-RAS, window/level and
subject-hierarchy folder, provenance in ``LDAE.*`` attributes. Sources are never modified. Nodes
are only created on the thread that calls ``poll``/``wait``, and only after the worker reported
success; a failure or a cancel adds nothing to the scene.

Uses only MRML (testable with slicer-core), the worker client and nibabel; never Qt, never torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from ..errors import LDAEError
from ..server.client import WorkerClient, WorkerError
from . import nodes as mrml
from .job import Job

INPUT_SPACE_LABELS = {"mni": "registered to MNI", "model": "already in model space", "raw": "raw scan (register first)"}


class LDAESlicerAdapter:
    """The LDAE operations on MRML volume nodes, run by one warm worker process.

    Args:
        model_path: the model folder (bundle or the authors' files) the worker loads.
        python: interpreter for the worker (``PythonSlicer`` in Slicer; default the current one).
        device, dtype, decode_dtype, threads: worker settings (see ``LDAELib.server.worker``).
        temp_dir: where volumes are exchanged with the worker (default: a new private folder in
            ``temp_root``, or in the system's temporary folder; removed by ``close``).
        temp_root: where that private folder is made (Slicer's temporary path in the module).
        client: an already made ``WorkerClient`` (tests may pass their own); otherwise one is made.
        sequences_logic: the Sequences module logic (the application's is found by itself).
        cache_dir: keep the scans' encodings on disk in this folder, so that a new session starts
            warm on scans it has seen (off when None: the files are derived from the scans).
    """

    def __init__(self, model_path=None, *, python: str | None = None, device: str = "auto", dtype: str = "float32", decode_dtype: str = "float32",
                 threads: int | None = None, temp_dir: str | Path | None = None, client: WorkerClient | None = None,
                 sequences_logic=None, cache_dir: str | Path | None = None, temp_root: str | Path | None = None) -> None:
        if client is None and model_path is None:
            raise LDAEError("no model chosen: choose the demo model, the authors' weights folder or a bundle folder")
        self.client = client or WorkerClient(model_path, python=python, device=device, dtype=dtype, decode_dtype=decode_dtype,
                                              threads=threads, cache_dir=cache_dir)
        self._own_temp = temp_dir is None
        self.temp_dir = Path(temp_dir or tempfile.mkdtemp(prefix="LDAE-", dir=temp_root))  # mode 0700: the scans are patient data
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.sequences_logic = sequences_logic
        self._jobs: dict[int, Job] = {}
        self._sources: dict[str, tuple[str, Path]] = {}
        self.start_error: str | None = None
        self.on_ready: Callable[[dict], None] | None = None
        self._stopping = False  # the worker is being ended on purpose: its exit is no failure

    # ------------------------------------------------------------------ worker
    @property
    def info(self) -> dict | None:
        """The worker's ready message (model, diagnostics), once it has arrived."""
        return self.client.info

    def start_worker(self, wait: bool = True, idle: Callable[[], None] | None = None, timeout: float = 900.0) -> dict | None:
        """Start the worker if it is not running; with ``wait`` until the model is loaded."""
        if not self.client.running:
            self.start_error = None
            self._stopping = False
            try:
                self.client.start(wait=False)
            except WorkerError as err:
                raise LDAEError(str(err)) from None
        if wait and self.client.info is None:
            try:
                info = self.client.wait_ready(timeout=timeout, idle=idle)
            except WorkerError as err:
                self.start_error = str(err)
                raise LDAEError(str(err)) from None
            if self.on_ready:
                self.on_ready(info)
        return self.client.info

    @property
    def starting(self) -> bool:
        """A worker was started and has neither reported ready nor failed yet (keep polling)."""
        return self.client.proc is not None and self.client.info is None and self.start_error is None and not self._stopping

    def forget_sources(self) -> None:
        """Delete the scans written for the worker (patient data; the worker re-reads a scan sent again)."""
        for _, path in self._sources.values():
            path.unlink(missing_ok=True)
        self._sources.clear()

    def model_info(self) -> dict:
        info = self.start_worker(wait=True)
        return info["model"]

    def close(self) -> None:
        """Stop the worker and remove the temporary files."""
        self._stopping = True
        for job in list(self._jobs.values()):
            job._finish("cancelled")
        self._jobs.clear()
        self.client.close()
        self.forget_sources()
        if self._own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def poll(self, timeout: float = 0.0) -> None:
        """Handle the worker's messages: progress to jobs, results to new nodes. Main thread only."""
        for msg in self.client.poll(timeout):
            t, rid = msg.get("type"), msg.get("id")
            if t == "ready":
                if self.on_ready:
                    self.on_ready(msg)
                continue
            if t == "exit" and self.client.info is None and not self._stopping and self.start_error is None:
                # died while loading without an error line (CUDA error, missing module, native crash)
                self.start_error = msg.get("message") or f"the LDAE worker stopped (exit code {msg.get('returncode')})"
                continue
            if t == "error" and rid is None and msg.get("kind") != "protocol":
                self.start_error = msg.get("message")
                for job in list(self._jobs.values()):
                    self._jobs.pop(job.id, None)
                    job._finish("error", f"the model could not be loaded: {self.start_error}")
                continue
            job = self._jobs.get(rid)
            if job is None:
                continue
            if t == "progress":
                job.progress = msg
                if job.on_progress:
                    job.on_progress(job, msg)
            elif t == "result":
                self._jobs.pop(rid, None)
                job.result = msg
                try:
                    job.nodes = job._build(msg)
                except (LDAEError, OSError, ValueError) as err:
                    job._finish("error", str(err))
                else:
                    job._finish("done")
            elif t == "error":
                self._jobs.pop(rid, None)
                job._finish("error", msg.get("message", "the LDAE worker reported an error"))
            elif t == "cancelled":
                self._jobs.pop(rid, None)
                job._finish("cancelled")

    def cancel(self, job: Job | None = None, kill: bool = True) -> None:
        """Cancel one job (or all). ``kill`` ends the worker's process tree at once."""
        jobs = [job] if job is not None else list(self._jobs.values())
        if kill:
            jobs = list(self._jobs.values())  # the process serves them all
            for j in jobs:
                self._jobs.pop(j.id, None)
            self._stopping = True
            self.client.kill()
            self.forget_sources()
            for j in jobs:
                j._finish("cancelled")
        else:
            for j in jobs:
                if not j.done:
                    self.client.cancel(j.id)

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    # ------------------------------------------------------------------ requests
    def _source(self, node) -> dict:
        """Write the node for the worker once per content; {"path", "key"}."""
        mrml.check_scalar_volume(node)
        image = node.GetImageData()
        stamp = json.dumps([node.GetID(), image.GetMTime(), mrml.world_affine(node).round(9).tolist()])
        key = hashlib.sha1(stamp.encode()).hexdigest()[:16]
        cached = self._sources.get(node.GetID())
        if cached and cached[0] == key and cached[1].exists():
            return {"path": str(cached[1]), "key": key}
        if cached:
            cached[1].unlink(missing_ok=True)
        path = mrml.write_nifti(node, self.temp_dir / f"source_{key}.nii")
        self._sources[node.GetID()] = (key, path)
        return {"path": str(path), "key": key}

    def _submit(self, kind: str, request: dict, build: Callable[[Job, dict], list], outputs: bool = True) -> Job:
        self.start_worker(wait=False)
        out_dir = None
        if outputs:
            out_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=self.temp_dir))
            request = dict(request, out_dir=str(out_dir))
        try:
            rid = self.client.submit(request)
        except WorkerError as err:
            if out_dir:
                shutil.rmtree(out_dir, ignore_errors=True)
            raise LDAEError(str(err)) from None
        job = Job(self, rid, kind, lambda msg: build(job, msg), out_dir)
        self._jobs[rid] = job
        return job

    @staticmethod
    def _direction(direction) -> tuple[object, str]:
        """(protocol value, short name) of a direction name or a probe file path."""
        if isinstance(direction, Path) or (isinstance(direction, str) and (direction.endswith((".safetensors", ".ckpt", ".pt")) or "/" in direction or "\\" in direction)):
            p = Path(direction)
            return {"file": str(p)}, p.stem
        if not direction:
            raise LDAEError("choose a direction (e.g. cn) or a probe file")
        return str(direction), str(direction)

    def _check_alive(self, *nodes) -> None:
        for node in nodes:
            if node.GetScene() is None:
                raise LDAEError(f"'{node.GetName()}' was removed from the scene while LDAE was running; nothing was added")

    def _say_note(self, operation: str) -> None:
        """Log what the model's card notes about ``operation`` (the panel shows it under the
        operation's button; each output's provenance carries it as ``model_limitation``)."""
        model = (self.client.info or {}).get("model") or {}
        note = (model.get("limitations") or {}).get(operation)
        if note:
            logging.getLogger(__name__).warning("%s: %s", model.get("name", "this model"), note)

    def _model_attributes(self, msg: dict) -> dict:
        model = (msg.get("provenance") or {}).get("model") or {}
        return {"ModelName": model.get("name"), "ModelId": model.get("id"), "ModelHash": model.get("hash")}

    # ------------------------------------------------------------------ edit / reconstruct
    def start_edit(self, volume, direction, alphas: float | Sequence[float], steps: int = 10, *, latent_seed: int | None = None,
                   input_space: str = "mni", difference: bool | str = False, preview: bool = False, show: bool = True,
                   region: dict | None = None, preview_dtype: str = "auto") -> Job:
        """Edit ``volume`` along ``direction`` (a name of the model, or a probe file) by each alpha.

        ``preview``: update one reusable "<source> LDAE preview" node instead of adding nodes.
        ``region``: preview only the slices on screen, ``{"point": [R, A, S], "planes": ["axial", …]}``
        (``visible_region()`` reads it from the slice views): the model decodes only the slabs under
        them, several times faster than the whole volume; the node holds the source elsewhere and is
        never kept as a result. ``preview_dtype``: precision of that preview's sampling ("auto":
        bfloat16 where the device computes it natively, about twice as fast; "float32"; "bfloat16").
        ``difference``: also add a difference map as a colour overlay per result: True or "source"
        for result − source; "reconstruction" for result − the scan's DDIM reconstruction at the
        same step count, the edit's own change without what the autoencoder loses (computed once
        per scan and step count, one sampling more on the first edit).
        """
        if not preview:  # a preview follows the slider: the panel shows the note, the log need not repeat it
            self._say_note("edit")
        reference = self._difference_reference(difference)
        alphas = [float(a) for a in (alphas if isinstance(alphas, (list, tuple)) else [alphas])]
        if not alphas:
            raise LDAEError("give at least one alpha")
        if region is not None and not preview:
            raise LDAEError("a region of the slices on screen is for previews: pass preview=True, or no region for a full result")
        dvalue, dname = self._direction(direction)
        src = self._source(volume)
        request = {"op": "edit", "source": src, "direction": dvalue, "alphas": alphas, "steps": int(steps),
                   "latent_seed": latent_seed, "input_space": input_space}
        if reference == "reconstruction":
            request["difference_reference"] = reference
        if region is not None:
            request.update(region={"point": [float(v) for v in region["point"]], "planes": list(region["planes"])},
                           preview_dtype=preview_dtype)

        def build(job: Job, msg: dict) -> list:
            self._check_alive(volume)
            scene = volume.GetScene()
            made = []
            ref = next((mrml.read_nifti_ijk(o["path"])[0] for o in msg["outputs"] if o.get("kind") == "reference"), None)
            if reference == "reconstruction" and ref is None:
                raise LDAEError("the worker sent no reconstruction to compare with; restart LDAE's worker")
            with mrml.NewNodes(scene):
                for out in msg["outputs"]:
                    if out.get("kind") == "reference":
                        continue
                    data, _ = mrml.read_nifti_ijk(out["path"])
                    attrs = dict(self._model_attributes(msg), Operation="edit", Direction=dname, Alpha=f"{out['alpha']:+g}",
                                 Steps=str(steps), Seed="deterministic" if latent_seed is None else str(latent_seed),
                                 SourceNodeID=volume.GetID(), InputSpace=input_space)
                    if preview:
                        node = self._preview_node(volume, data)
                        attrs["Preview"] = "true"
                        attrs["PreviewRegion"] = ", ".join(f"{r['plane']} (model slices {r['start']}–{r['stop'] - 1})"
                                                           for r in msg.get("region") or []) or None
                    else:
                        node = mrml.new_volume_like(volume, data, f"{volume.GetName()} LDAE {dname} α={out['alpha']:+.1f}")
                    mrml.set_provenance(node, dict(out.get("provenance") or msg["provenance"], alpha=out["alpha"], source_node_id=volume.GetID(),
                                                   source_name=volume.GetName()), **attrs)
                    if preview and not msg.get("region"):
                        node.RemoveAttribute("LDAE.PreviewRegion")  # a reused node that showed a region before
                    made.append(node)
                    if reference:
                        made.append(self._difference(volume, node, preview, ref))
            if show and made:
                mrml.show_in_slice_views(scene, made[0], made[1] if reference else None)
            return made

        return self._submit("edit", request, build)

    @staticmethod
    def _difference_reference(difference) -> str | None:
        """``difference`` of an edit → None (no map), "source" or "reconstruction"."""
        if difference is True or difference == "source":
            return "source"
        if difference is False or difference is None:
            return None
        if difference == "reconstruction":
            return "reconstruction"
        raise LDAEError(f"difference must be True, False, 'source' or 'reconstruction', got {difference!r}")

    def edit(self, volume, direction, alpha: float | Sequence[float], steps: int = 10, *, wait: bool = True,
             idle: Callable[[], None] | None = None, **options):
        """Edit and wait: the new node (one alpha) or list of nodes; ``wait=False`` gives the Job."""
        job = self.start_edit(volume, direction, alpha, steps, **options)
        if not wait:
            return job
        made = [n for n in job.wait(idle=idle) if n.GetAttribute("LDAE.Operation") == "edit"]
        return made[0] if not isinstance(alpha, (list, tuple)) else made

    def start_reconstruct(self, volume, steps: int = 10, *, latent_seed: int | None = None, input_space: str = "mni",
                          difference: bool = False, show: bool = True) -> Job:
        """Encode and decode through the diffusion (what the model keeps of the scan)."""
        self._say_note("reconstruct")
        src = self._source(volume)
        request = {"op": "reconstruct", "source": src, "steps": int(steps), "latent_seed": latent_seed, "input_space": input_space}

        def build(job: Job, msg: dict) -> list:
            self._check_alive(volume)
            with mrml.NewNodes(volume.GetScene()):
                data, _ = mrml.read_nifti_ijk(msg["outputs"][0]["path"])
                node = mrml.new_volume_like(volume, data, f"{volume.GetName()} LDAE reconstruction")
                mrml.set_provenance(node, dict(msg["provenance"], source_node_id=volume.GetID()), **self._model_attributes(msg),
                                    Operation="reconstruct", Steps=str(steps), SourceNodeID=volume.GetID(), InputSpace=input_space,
                                    Seed="deterministic" if latent_seed is None else str(latent_seed))
                made = [node] + ([self._difference(volume, node)] if difference else [])
            if show:
                mrml.show_in_slice_views(volume.GetScene(), made[0], made[1] if difference else None)
            return made

        return self._submit("reconstruct", request, build)

    def start_encode(self, volume, steps: int = 10, *, preview_steps: int | None = None, latent_seed: int | None = None,
                     input_space: str = "mni") -> Job:
        """Encode and invert in the background (no nodes): the first slider move is then fast.
        ``preview_steps``: also invert at the previews' step count and record what a preview of the
        slices on screen needs (the GroupNorm statistics of the scan's decode)."""
        request = {"op": "encode", "source": self._source(volume), "steps": int(steps), "latent_seed": latent_seed, "input_space": input_space}
        if preview_steps:
            request["preview_steps"] = int(preview_steps)
        return self._submit("encode", request, lambda job, msg: [], outputs=False)

    def _preview_node(self, volume, data):
        scene = volume.GetScene()
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            if node.GetAttribute("LDAE.Preview") == "true" and node.GetAttribute("LDAE.SourceNodeID") == volume.GetID() \
                    and node.GetAttribute("LDAE.Operation") == "edit":
                import slicer

                slicer.util.updateVolumeFromArray(node, data.transpose(2, 1, 0).copy())
                return node
        return mrml.new_volume_like(volume, data, f"{volume.GetName()} LDAE preview")

    def promote_preview(self, volume, direction, alpha: float, steps: int) -> list | None:
        """Keep the preview as a result when it was made at full quality (``steps``) for exactly this
        direction and alpha: it is renamed and stops being a preview (no recomputation). None if not."""
        _, dname = self._direction(direction)
        scene = volume.GetScene()
        previews = []
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            if node.GetAttribute("LDAE.Preview") == "true" and node.GetAttribute("LDAE.SourceNodeID") == volume.GetID():
                previews.append(node)
        result = next((n for n in previews if n.GetAttribute("LDAE.Operation") == "edit" and not n.GetAttribute("LDAE.PreviewRegion")
                       and n.GetAttribute("LDAE.Direction") == dname
                       and n.GetAttribute("LDAE.Alpha") == f"{float(alpha):+g}" and n.GetAttribute("LDAE.Steps") == str(int(steps))), None)
        if result is None:
            return None
        kept = [result]
        result.SetName(scene.GenerateUniqueName(f"{volume.GetName()} LDAE {dname} α={float(alpha):+.1f}"))
        result.RemoveAttribute("LDAE.Preview")
        for node in previews:
            if node.GetAttribute("LDAE.Operation") == "difference":
                node.SetName(scene.GenerateUniqueName(f"{result.GetName()} difference"))
                node.SetAttribute("LDAE.ResultNodeID", result.GetID())
                node.RemoveAttribute("LDAE.Preview")
                kept.append(node)
        return kept

    def remove_previews(self, volume=None) -> None:
        """Remove preview nodes (of one source, or all) and their difference maps."""
        scene = volume.GetScene() if volume is not None else None
        if scene is None:
            return
        doomed = []
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            if node.GetAttribute("LDAE.Preview") == "true" and node.GetAttribute("LDAE.SourceNodeID") == volume.GetID():
                doomed.append(node)
        for node in doomed:
            scene.RemoveNode(node)

    def _difference(self, source, result, preview: bool = False, reference=None):
        """result − source (or − ``reference``, the reconstruction's voxels on the source's grid)."""
        if preview:
            scene = source.GetScene()
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
                node = scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                if node.GetAttribute("LDAE.Preview") == "true" and node.GetAttribute("LDAE.Operation") == "difference" \
                        and node.GetAttribute("LDAE.SourceNodeID") == source.GetID():
                    scene.RemoveNode(node)
                    break
        node = mrml.add_difference_map(source, result, f"{result.GetName()} difference" if not preview else f"{source.GetName()} LDAE preview difference",
                                       reference_ijk=reference)
        node.SetAttribute("LDAE.DifferenceReference", "source" if reference is None else "reconstruction")
        node.SetAttribute("LDAE.Synthetic", "true")
        node.SetAttribute("LDAE.Operation", "difference")
        node.SetAttribute("LDAE.SourceNodeID", source.GetID())
        node.SetAttribute("LDAE.ResultNodeID", result.GetID())
        if preview:
            node.SetAttribute("LDAE.Preview", "true")
        return node

    # ------------------------------------------------------------------ interpolation
    def start_interpolate(self, a, b, fractions: Sequence[float] | None = None, steps: int = 10, *, months: Sequence[float] | None = None,
                          latent_seed: int | None = None, input_space: str = "mni", sequence: bool = True,
                          include_sources: bool = True, difference: bool = False, show: bool = True) -> Job:
        """Scans between timepoints ``a`` and ``b`` at ``fractions`` (0 = a, 1 = b), or at ``months``
        after ``a`` (needs both scans' dates). Results lie on ``a``'s grid, in ``a``'s folder;
        with ``sequence`` also a sequence (index t, or time in months) and a browser to play it.
        """
        self._say_note("interpolate")
        if a is None or b is None:
            raise LDAEError("choose two timepoint volumes")
        if a is b:
            raise LDAEError("choose two different timepoint volumes")
        span = None
        if months is not None:
            span = mrml.months_between(a, b)
            if span is None:
                raise LDAEError("the scans' dates are unknown, so months cannot be used; give fractions (0–1) instead, "
                                "or set the dates (attribute LDAE.Date = YYYY-MM-DD)")
            fractions = mrml.months_to_fractions(months, span)
        fractions = [float(f) for f in (fractions or [])]
        if not fractions:
            raise LDAEError("give at least one fraction between 0 and 1 (e.g. 0.25 0.5 0.75)")
        request = {"op": "interpolate", "a": self._source(a), "b": self._source(b), "fractions": fractions, "steps": int(steps),
                   "latent_seed": latent_seed, "input_space": input_space}

        def build(job: Job, msg: dict) -> list:
            self._check_alive(a, b)
            scene = a.GetScene()
            frames, made = [], []
            with mrml.NewNodes(scene):
                for i, out in enumerate(msg["outputs"]):
                    f = out["fraction"]
                    data, _ = mrml.read_nifti_ijk(out["path"])
                    node = mrml.new_volume_like(a, data, f"{a.GetName()}→{b.GetName()} t={f:.2f}")
                    attrs = dict(self._model_attributes(msg), Operation="interpolate", Fraction=f"{f:g}", Steps=str(steps),
                                 Seed="deterministic" if latent_seed is None else str(latent_seed), SourceNodeID=a.GetID(),
                                 SourceNodeID2=b.GetID(), InputSpace=input_space)
                    if months is not None:
                        attrs["Months"] = f"{float(months[i]):g}"
                    mrml.set_provenance(node, dict(out.get("provenance") or msg["provenance"], fraction=f, source_node_ids=[a.GetID(), b.GetID()],
                                                   source_names=[a.GetName(), b.GetName()]), **attrs)
                    frames.append(node)
                    made.append(node)
                    if difference:
                        made.append(self._difference(a, node))
                if sequence:
                    index = list(months) if months is not None else fractions
                    seq_frames, seq_values = list(frames), [float(v) for v in index]
                    if include_sources:
                        end = span if months is not None else 1.0
                        if 0.0 not in seq_values:
                            seq_frames.insert(0, a)
                            seq_values.insert(0, 0.0)
                        if end not in seq_values:
                            seq_frames.append(b)
                            seq_values.append(end)
                    order = sorted(range(len(seq_values)), key=lambda k: seq_values[k])
                    seq, browser = mrml.add_sequence([seq_frames[k] for k in order], [seq_values[k] for k in order],
                                                     f"{a.GetName()}→{b.GetName()} LDAE interpolation",
                                                     index_name="time" if months is not None else "t",
                                                     index_unit="months" if months is not None else "",
                                                     logic=mrml.sequences_logic(scene, self.sequences_logic), place_with=a)
                    for node in (seq, browser):
                        node.SetAttribute("LDAE.Operation", "interpolate")
                        node.SetAttribute("LDAE.SourceNodeID", a.GetID())
                        node.SetAttribute("LDAE.SourceNodeID2", b.GetID())
                    made += [seq, browser]
            if show and frames:
                proxy = made[-1].GetProxyNode(made[-2]) if sequence else frames[0]
                mrml.show_in_slice_views(scene, proxy or frames[0])
            return made

        return self._submit("interpolate", request, build)

    def interpolate(self, a, b, fractions: Sequence[float] | None = None, steps: int = 10, *, wait: bool = True,
                    idle: Callable[[], None] | None = None, **options):
        """Interpolate and wait: the new frame volumes (the sequence and browser are in the scene,
        see ``job.nodes``); ``wait=False`` gives the Job."""
        job = self.start_interpolate(a, b, fractions, steps, **options)
        if not wait:
            return job
        return [n for n in job.wait(idle=idle) if n.IsA("vtkMRMLScalarVolumeNode") and n.GetAttribute("LDAE.Operation") == "interpolate"]

    # ------------------------------------------------------------------ variations
    def start_vary(self, volume, n: int = 4, seed: int = 0, steps: int = 10, *, input_space: str = "mni", show: bool = True) -> Job:
        """``n`` stochastic variations that share the scan's semantic code, and their voxel-wise
        spread (standard deviation) as a heat-coloured volume."""
        request = {"op": "vary", "source": self._source(volume), "n": int(n), "seed": int(seed), "steps": int(steps), "input_space": input_space}
        self._say_note("vary")

        def build(job: Job, msg: dict) -> list:
            self._check_alive(volume)
            made = []
            with mrml.NewNodes(volume.GetScene()):
                for out in msg["outputs"]:
                    data, _ = mrml.read_nifti_ijk(out["path"])
                    attrs = dict(self._model_attributes(msg), Steps=str(steps), Seed=str(seed), SourceNodeID=volume.GetID(), InputSpace=input_space)
                    if out["kind"] == "spread":
                        node = mrml.add_spread_map(volume, data, f"{volume.GetName()} LDAE spread of {n} (seed {seed})")
                        attrs["Operation"] = "spread"
                    else:
                        node = mrml.new_volume_like(volume, data, f"{volume.GetName()} LDAE variation {out['index'] + 1} seed={seed}")
                        attrs.update(Operation="vary", Index=str(out["index"]))
                    mrml.set_provenance(node, dict(out.get("provenance") or msg["provenance"], index=out.get("index"), source_node_id=volume.GetID()), **attrs)
                    made.append(node)
            if show and made:
                mrml.show_in_slice_views(volume.GetScene(), made[0], made[-1])
            return made

        return self._submit("vary", request, build)

    def vary(self, volume, n: int = 4, seed: int = 0, steps: int = 10, *, wait: bool = True, idle=None, **options):
        job = self.start_vary(volume, n, seed, steps, **options)
        return job.wait(idle=idle) if wait else job
