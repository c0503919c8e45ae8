"""The example workflows in the real ComfyUI frontend, in headless Chromium (issue #5).

A real ComfyUI server (the `comfy_server` fixture) serves its real frontend (comfyui-frontend-package
1.32); Playwright drives Debian's Chromium (installed by scripts/setup_host.py; never a browser that
Playwright downloads). Each workflow is loaded the way the frontend's template browser loads one: fetched
from /api/workflow_templates/comfyui-spare/<name>.json, then `app.loadGraphData(json, ..., {openSource:
"template"})`. It must come up with

  * no missing-node report: the frontend calls `app.showMissingNodesError(types)` (which opens the
    "global-missing-nodes" dialog) for every node whose type is not in `LiteGraph.registered_node_types`;
    the test records those calls, and also fails on any dialog left open after the load;
  * every node of the graph a registered type without `has_errors` (a missing type becomes a red
    placeholder node), and the same nodes (ids and types) and link count as the JSON;
  * no console error or warning, and no page error, that names one of the pack's node types.

`test_missing_node_detector_sees_an_unknown_node_type` loads a copy with one type renamed, in memory, and
checks that all of this reports it, so the checks above cannot pass vacuously.

The demo graph's screenshot (docs/demo_graph.png, shown in the README) is taken on every run but written
there only with SPARE_UPDATE_SCREENSHOT=1, so a test run never rewrites a tracked file:

    SPARE_UPDATE_SCREENSHOT=1 .host/venv/bin/python -m pytest tests/test_browser.py -q
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
TEMPLATE_MODULE = "comfyui-spare"  # the folder name ComfyUI serves this pack's templates under
DEMO = "spare_demo_erase_style"
SCREENSHOT = ROOT / "docs" / "demo_graph.png"
VIEWPORT = {"width": 1600, "height": 900}
# Same default as scripts/setup_host.py, which installs Debian's `chromium` there when it can.
CHROMIUM = Path(os.environ.get("SPARE_CHROMIUM", "/usr/bin/chromium"))
# Flags seen to work as root in this sandbox: no sandbox, no GPU, and no background connections
# (the network is closed; without these Chromium keeps trying to reach Google's hosts).
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
    # The frontend also asks outside hosts (registry, news); fail those at once, with no DNS look-up.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
# Server-side user settings, so that a fresh user starts on an empty canvas: no first-run template
# browser, no minimap over the graph; the missing-node and missing-model warnings are explicitly on.
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Workflow.ShowMissingModelsWarning": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
}
TIMEOUT_MS = 120_000  # generous: the CPU is shared and slow in CI

# Runs in the page once the app is up: record every missing-node report the frontend makes.
INSTALL_PROBE_JS = """() => {
    window.__spare = {missing: []};
    const original = app.showMissingNodesError.bind(app);
    app.showMissingNodesError = (types, ...rest) => {
        window.__spare.missing.push(...types.map(t => typeof t === "string" ? t : t.type));
        return original(types, ...rest);
    };
}"""

# What the template browser does (useTemplateWorkflows.loadWorkflowTemplate in frontend 1.32).
LOAD_TEMPLATE_JS = """async ([module, name]) => {
    window.__spare.missing = [];
    const path = `/workflow_templates/${module}/${name}.json`;
    const resp = await fetch(app.api?.apiURL ? app.api.apiURL(path) : "/api" + path);
    if (!resp.ok) return {status: resp.status};
    const json = await resp.json();
    await app.loadGraphData(json, true, true, name, {openSource: "template"});
    return {status: resp.status, served: json};
}"""

LOAD_JSON_JS = """async ([json, name]) => {
    window.__spare.missing = [];
    await app.loadGraphData(json, true, true, name, {openSource: "template"});
}"""

# The state after a load: reported missing types, the live graph, and any dialog that is open.
GRAPH_STATE_JS = """() => {
    const serialized = app.graph.serialize();
    const visible = el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
    return {
        missing: window.__spare.missing,
        nodes: app.graph.nodes.map(n => ({
            id: n.id, type: n.type, registered: n.type in LiteGraph.registered_node_types,
            has_errors: !!n.has_errors,
        })),
        links: serialized.links.length,
        dialogs: [...document.querySelectorAll(".p-dialog, [role=dialog]")].filter(visible)
            .map(d => d.innerText.trim().slice(0, 600)),
    };
}"""

APP_READY_JS = """() => window.app && window.app.graph && window.app.canvas && window.LiteGraph
    && typeof window.app.loadGraphData === "function"
    && Object.keys(LiteGraph.registered_node_types).some(t => t.startsWith("Spare"))"""


def _next_frames(page, settle_ms: int = 750) -> None:
    """Let Vue render what the last call opened (dialogs, toasts) and the canvas redraw."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.wait_for_timeout(settle_ms)


class Frontend:
    """One headless Chromium page on the test server's frontend, with the probe installed."""

    def __init__(self, page, origin: str, pack_types: set[str]):
        self.page = page
        self.origin = origin
        self.pack_types = pack_types
        self.console: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def _on_console(self, message) -> None:
        if message.type not in ("error", "warning"):
            return
        url = message.location.get("url") or ""
        # The frontend asks api.comfy.org about each node type (registry info); with no network outside
        # this machine those requests fail, which says nothing about the pack.
        if message.text.startswith("Failed to load resource: net::") and not url.startswith(self.origin):
            return
        self.console.append(f"console.{message.type}: {message.text} ({url})")

    def close_dialogs(self) -> None:
        """Close what an earlier load left open (a failed test's dialog), so each load starts clean."""
        for _ in range(3):
            if not self.page.evaluate(GRAPH_STATE_JS)["dialogs"]:
                return
            self.page.keyboard.press("Escape")
            _next_frames(self.page, 300)
        raise AssertionError(f"a dialog does not close: {self.page.evaluate(GRAPH_STATE_JS)['dialogs']}")

    def load_template(self, name: str) -> dict:
        self.close_dialogs()
        mark = len(self.console)
        result = self.page.evaluate(LOAD_TEMPLATE_JS, [TEMPLATE_MODULE, name])
        assert result["status"] == 200, f"/api/workflow_templates/{TEMPLATE_MODULE}/{name}.json: {result['status']}"
        _next_frames(self.page)
        return {**self.page.evaluate(GRAPH_STATE_JS), "served": result["served"], "console": self.console[mark:]}

    def load_json(self, workflow: dict, name: str) -> dict:
        self.close_dialogs()
        mark = len(self.console)
        self.page.evaluate(LOAD_JSON_JS, [workflow, name])
        _next_frames(self.page)
        return {**self.page.evaluate(GRAPH_STATE_JS), "console": self.console[mark:]}

    def problems(self, state: dict, workflow: dict) -> list[str]:
        """Everything that says the workflow did not load cleanly; empty when it did."""
        out = []
        if state["missing"]:
            out.append(f"the frontend reported missing node types: {state['missing']}")
        unknown = [f"#{n['id']} {n['type']}" for n in state["nodes"] if not n["registered"] or n["has_errors"]]
        if unknown:
            out.append(f"nodes whose type the frontend does not know: {unknown}")
        if state["dialogs"]:
            out.append(f"a dialog is open after loading: {state['dialogs']}")
        want = sorted((n["id"], n["type"]) for n in workflow["nodes"])
        got = sorted((n["id"], n["type"]) for n in state["nodes"])
        if got != want:
            out.append(f"the graph's nodes differ from the JSON's: got {got}, want {want}")
        if state["links"] != len(workflow["links"]):
            out.append(f"the graph has {state['links']} links, the JSON {len(workflow['links'])}")
        ours = [line for line in state["console"] if any(t in line for t in self.pack_types | {TEMPLATE_MODULE})]
        if ours:
            out.append("console errors about the pack's nodes:\n  " + "\n  ".join(ours))
        return out


@pytest.fixture(scope="module")
def frontend(comfy_server):
    if not CHROMIUM.exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: scripts/setup_host.py installs Debian's `chromium` package when run as "
            f"root; otherwise run `sudo apt-get install chromium` (or set SPARE_CHROMIUM=/path/to/chromium)",
            pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"the `playwright` package is missing ({e}): run `python3 scripts/setup_host.py`, "
                    f"which installs tests/requirements.txt", pytrace=False)

    info = comfy_server.get_json("/object_info")
    pack_types = {name for name, node in info.items() if TEMPLATE_MODULE in str(node.get("python_module", ""))}
    assert pack_types, "the server lists none of the pack's nodes"
    comfy_server.request("/settings", SETTINGS)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                                     timeout=TIMEOUT_MS)
        try:
            context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
            # The "Introducing Nodes 2.0" banner remembers its dismissal in localStorage.
            context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            ui = Frontend(page, comfy_server.url, pack_types)
            page.goto(comfy_server.url, wait_until="domcontentloaded")
            page.wait_for_function(APP_READY_JS, timeout=TIMEOUT_MS)
            page.evaluate(INSTALL_PROBE_JS)
            _next_frames(page)
            ui.close_dialogs()  # whatever a start-up might still have opened
            yield ui
        finally:
            browser.close()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_loads_in_the_frontend_with_no_missing_nodes(frontend, comfy_server, path):
    workflow = json.loads(path.read_text())
    started = time.monotonic()
    state = frontend.load_template(path.stem)
    assert state["served"] == workflow, "the template the server serves differs from the file"
    problems = frontend.problems(state, workflow)
    assert not problems, f"{path.name} in the frontend:\n" + "\n".join(problems)
    print(f"{path.stem}: {len(state['nodes'])} nodes, {state['links']} links, "
          f"loaded in {time.monotonic() - started:.1f}s")

    if path.stem == DEMO:
        take_demo_screenshot(frontend.page)


# What the frontend would queue on "Run": its own UI -> API conversion of the loaded graph.
GRAPH_TO_PROMPT_JS = """async () => {
    const {output} = await app.graphToPrompt();
    return Object.fromEntries(Object.entries(output)
        .map(([id, node]) => [id, {class_type: node.class_type, inputs: node.inputs}]));
}"""


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_frontend_reads_the_widget_values_the_workflow_means(frontend, comfy_server, path):
    """The frontend must read each node's widgets_values as the pack's converter wrote them.

    Widget values are positional, and the frontend adds a hidden "control after generate" value
    after every INT input that asks for one *and* after any INT input named seed or noise_seed
    (frontend 1.32: `control_after_generate ?? ["seed", "noise_seed"].includes(name)`). If the JSON
    and the frontend disagree, the values shift by one: a user sees and runs other settings than the
    ones the server tests run (scripts/comfy_workflows.py's to_api)."""
    from comfy_workflows import to_api

    workflow = json.loads(path.read_text())
    frontend.load_template(path.stem)
    queued = frontend.page.evaluate(GRAPH_TO_PROMPT_JS)
    meant = to_api(workflow, comfy_server.get_json("/object_info"))
    differences = [
        f"#{node_id} {meant[node_id]['class_type']}.{name}: frontend {queued[node_id]['inputs'].get(name)!r}, "
        f"workflow {value!r}"
        for node_id in sorted(meant, key=int) for name, value in meant[node_id]["inputs"].items()
        if queued.get(node_id, {}).get("inputs", {}).get(name) != value
    ]
    assert sorted(queued, key=int) == sorted(meant, key=int), "the frontend queues other nodes"
    assert not differences, f"{path.name}: the frontend reads other widget values:\n" + "\n".join(differences)


# Zoom so that all nodes fill the page's rectangle [left, top, right, bottom] (page pixels, chosen clear
# of the side bar and of the menus floating over the canvas's top and corners).
FRAME_GRAPH_JS = """([left, top, right, bottom]) => {
    const box = [Infinity, Infinity, -Infinity, -Infinity];
    for (const node of app.graph.nodes) {
        const [x, y, w, h] = node.getBounding();
        box[0] = Math.min(box[0], x); box[1] = Math.min(box[1], y);
        box[2] = Math.max(box[2], x + w); box[3] = Math.max(box[3], y + h);
    }
    const rect = app.canvas.canvas.getBoundingClientRect();
    const width = right - left, height = bottom - top;
    const scale = Math.min(width / (box[2] - box[0]), height / (box[3] - box[1]));
    const ds = app.canvas.ds;
    ds.scale = scale;
    ds.offset[0] = (left - rect.left + (width - (box[2] - box[0]) * scale) / 2) / scale - box[0];
    ds.offset[1] = (top - rect.top + (height - (box[3] - box[1]) * scale) / 2) / scale - box[1];
    app.canvas.setDirty(true, true);
    return scale;
}"""


def take_demo_screenshot(page) -> None:
    w, h = VIEWPORT["width"], VIEWPORT["height"]
    scale = page.evaluate(FRAME_GRAPH_JS, [88, 110, w - 24, h - 24])
    _next_frames(page, 1000)
    assert scale >= 0.6, f"the demo graph fits only at zoom {scale:.2f}: too small to read in the screenshot"
    shot = page.screenshot(type="png")
    if os.environ.get("SPARE_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(shot)
        print(f"wrote {SCREENSHOT.relative_to(ROOT)} (zoom {scale:.2f})")


def test_missing_node_detector_sees_an_unknown_node_type(frontend):
    """The checks above must fail on a workflow that names a node type no one registered."""
    workflow = json.loads((ROOT / "workflows" / f"{DEMO}.json").read_text())
    broken = next(n for n in workflow["nodes"] if n["type"] == "SpareDistill")
    broken["type"] = "SpareNodeThatDoesNotExist"
    state = frontend.load_json(workflow, "missing-node-check")
    try:
        assert state["missing"] == ["SpareNodeThatDoesNotExist"]
        assert [n["type"] for n in state["nodes"] if not n["registered"]] == ["SpareNodeThatDoesNotExist"]
        assert any("SpareNodeThatDoesNotExist" in d for d in state["dialogs"]), \
            f"no open dialog names the missing type: {state['dialogs']}"
        assert frontend.problems(state, workflow)
        # ... and the console check hears the page: an error naming a pack node is reported.
        frontend.page.evaluate("() => console.error('SpareDistill: a deliberate test error')")
        _next_frames(frontend.page, 100)
        assert any("SpareDistill: a deliberate test error" in line for line in frontend.console)
    finally:
        frontend.close_dialogs()
    assert not frontend.page.evaluate(GRAPH_STATE_JS)["dialogs"], "the missing-nodes dialog did not close"
