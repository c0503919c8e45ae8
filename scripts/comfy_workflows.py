"""ComfyUI workflows in both of ComfyUI's formats, from one compact description.

The UI format (what the browser saves and the template browser lists) and the API format
(what `POST /prompt` takes) differ in how they list widget values and links; both are
derived from the server's `/object_info`, so they cannot drift from the real nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@dataclass
class Node:
    """A node of a workflow: its class, its widget values by name, its links by input name."""

    id: int
    class_type: str
    widgets: dict = field(default_factory=dict)
    links: dict = field(default_factory=dict)  # input name -> (source node id, output slot)
    pos: tuple[int, int] = (0, 0)
    title: str | None = None


def _inputs(info: dict) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) for every input of a node class, in the order the UI shows them."""
    spec = info["input"]
    out = [(name, s, False) for name, s in spec.get("required", {}).items()]
    out += [(name, s, True) for name, s in spec.get("optional", {}).items()]
    return out


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_widget(name: str, spec: list) -> bool:
    """Whether the frontend adds a "control after generate" widget (and value) after this input.

    ComfyUI frontend 1.32 (useIntWidget): `control_after_generate ?? ["seed", "noise_seed"].includes(name)`
    for INT inputs; COMBO inputs only when control_after_generate is set."""
    options = spec[1] if len(spec) > 1 else {}
    if spec[0] == "INT":
        return bool(options.get("control_after_generate", name in ("seed", "noise_seed")))
    return bool(options.get("control_after_generate"))


def _widget_values(node: Node, info: dict) -> list:
    values = []
    for name, spec, _ in _inputs(info):
        if not _is_widget(spec):
            continue
        options = spec[1] if len(spec) > 1 else {}
        if name in node.widgets:
            value = node.widgets[name]
        elif "default" in options:
            value = options["default"]
        elif isinstance(spec[0], list):
            value = spec[0][0]
        else:
            value = options.get("options", [None])[0]
        values.append(value)
        if _has_control_widget(name, spec):
            values.append("fixed")  # the frontend's "control after generate" widget
    return values


def to_ui(nodes: list[Node], object_info: dict) -> dict:
    """The UI-format workflow (version 0.4) the ComfyUI frontend loads and saves."""
    links, link_id = [], 0
    ui_nodes = {n.id: None for n in nodes}
    outgoing: dict[tuple[int, int], list[int]] = {}
    incoming: dict[tuple[int, str], int] = {}
    by_id = {n.id: n for n in nodes}
    for node in nodes:
        info = object_info[node.class_type]
        for name, spec, _ in _inputs(info):
            if name in node.links:
                source, slot = node.links[name]
                link_id += 1
                source_type = object_info[by_id[source].class_type]["output"][slot]
                target_slot = [n for n, s, _ in _inputs(info) if not _is_widget(s)].index(name)
                links.append([link_id, source, slot, node.id, target_slot, source_type])
                outgoing.setdefault((source, slot), []).append(link_id)
                incoming[(node.id, name)] = link_id
    for order, node in enumerate(nodes):
        info = object_info[node.class_type]
        ui_nodes[node.id] = {
            "id": node.id,
            "type": node.class_type,
            "pos": list(node.pos),
            "size": [320, 120],
            "flags": {},
            "order": order,
            "mode": 0,
            "inputs": [
                {"name": name, "type": spec[0], "link": incoming.get((node.id, name))}
                for name, spec, _ in _inputs(info) if not _is_widget(spec)
            ],
            "outputs": [
                {"name": out_name, "type": out_type, "slot_index": slot, "links": outgoing.get((node.id, slot), [])}
                for slot, (out_type, out_name) in enumerate(zip(info["output"], info["output_name"]))
            ],
            "properties": {"Node name for S&R": node.class_type},
            "widgets_values": _widget_values(node, info),
            **({"title": node.title} if node.title else {}),
        }
    return {
        "last_node_id": max(n.id for n in nodes),
        "last_link_id": link_id,
        "nodes": list(ui_nodes.values()),
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def to_api(ui: dict, object_info: dict) -> dict:
    """The API-format prompt for `POST /prompt`, from a UI-format workflow."""
    link_source = {link[0]: (str(link[1]), link[2]) for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) != 0:
            continue  # muted or bypassed
        info = object_info[node["type"]]
        inputs: dict = {}
        values = list(node.get("widgets_values", []))
        for name, spec, optional in _inputs(info):
            if not _is_widget(spec):
                continue
            if optional and not values:
                continue  # saved before the node had this input: the server uses its default, as the browser does
            inputs[name] = values.pop(0)
            if _has_control_widget(name, spec):
                values.pop(0)
        for slot in node["inputs"]:
            if slot.get("link") is not None:
                source, index = link_source[slot["link"]]
                inputs[slot["name"]] = [source, index]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
