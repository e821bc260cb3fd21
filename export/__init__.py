"""Export: a trained student → a self-describing, validated ONNX bundle (DESIGN.md §2 "Bundle", §5).

    from export import ExportConfig, export_bundle
    report = export_bundle(ExportConfig(source="runs/sft/demo", out="bundles/demo", precision="int8"))

Needs the `export` extra (torch, transformers, onnx, onnxscript) and onnxruntime; the bundle it
writes is served by mmkp_edge without any of them but onnxruntime.
"""

from .exporter import ExportConfig, ExportReport, export_bundle

__all__ = ["ExportConfig", "ExportReport", "export_bundle"]
