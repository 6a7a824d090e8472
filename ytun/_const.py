"""yamux wire constants shared by the compiled codec and its pure-Python twin."""

PROTO_VERSION = 0
HEADER_SIZE = 12

# Frame types.
TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3

# Flag bits; unknown bits are ignored on receipt.
FLAG_SYN = 0x1
FLAG_ACK = 0x2
FLAG_FIN = 0x4
FLAG_RST = 0x8

# Go Away codes.
GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2

# Every stream starts with this window in both directions (hashicorp/yamux).
INITIAL_WINDOW = 256 * 1024
MAX_WINDOW = 0xFFFFFFFF

# Largest Data payload accepted in one frame unless configured otherwise; more is a
# protocol error (a bound on what one peer can make us buffer).
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
