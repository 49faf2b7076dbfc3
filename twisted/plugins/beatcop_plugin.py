from twisted.application.service import ServiceMaker

BeatCop = ServiceMaker(
    "BeatCop",
    "beatcop.tap",
    "Keep one command running on exactly one node of a cluster (Redis lease).",
    "beatcop",
)
