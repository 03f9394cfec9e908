"""The embedded synthetic dataset: a rendered, multi-view stand-in for Human3.6M.

``generate_dataset`` renders what ``data_manifests/synthetic.yaml`` declares (images and
ground truth); ``write_contact_sheet`` draws a grid of frames x views with the skeleton on top.
Modules: ``skeleton`` (body, forward kinematics), ``motion`` (five procedural actions),
``render`` (ray-cast capsules, room, lens distortion), ``generate`` (the dataset writer),
``contact_sheet`` (the visual check).
"""
from pipeline.synthetic.contact_sheet import write_contact_sheet
from pipeline.synthetic.generate import generate_dataset

__all__ = ["generate_dataset", "write_contact_sheet"]
