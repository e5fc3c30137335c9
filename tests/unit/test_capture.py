"""Parsing of tcpdump lines into packet directions (the lesson's DSR observation)."""
from netns_lab.capture import Capture, parse

LESSON_LINES = [
    "13:59:32.826328 eth0  In  IP 198.19.15.254.57064 > 198.19.0.1.30180: Flags [S], seq 2716257334, win 64240, length 0",
    "13:59:32.827552 eth0  Out IP 198.19.0.1.30180 > 198.19.15.254.57064: Flags [S.], seq 23038493, ack 2716257335, length 0",
    "tcpdump: listening on any, link-type LINUX_SLL2",
    "2 packets captured",
]


def test_parse_keeps_only_packets_with_direction():
    pkts = parse(LESSON_LINES)
    assert [p.direction for p in pkts] == [
        "198.19.15.254:57064 > 198.19.0.1:30180",
        "198.19.0.1:30180 > 198.19.15.254:57064",
    ]


def test_between_filters_by_address_pair():
    cap = Capture(lines=LESSON_LINES, packets=parse(LESSON_LINES))
    assert len(cap.between("198.19.15.254", "198.19.0.1")) == 1
    assert len(cap.between("198.19.0.1", "198.19.15.254")) == 1
    assert cap.between("198.19.0.2", "198.19.15.254") == []
