"""Several people per frame: who is who across views and over time (``association``), and one
set of detections per tracked person (``tracks``)."""
