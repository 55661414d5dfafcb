import socket, struct, sys
def q(name, qtype, qid, ad_edns=False, case=None):
    hdr = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 1 if ad_edns else 0)
    qn = b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\0'
    body = qn + struct.pack('>HH', qtype, 1)
    if ad_edns:
        body += b'\x00' + struct.pack('>HHIH', 41, 1232, 0, 0)
    return hdr + body
def udp(pkt):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
    s.sendto(pkt, ('127.0.0.1', 15353)); return s.recv(4096)
def tcp(pkt):
    s = socket.create_connection(('127.0.0.1', 15353), timeout=2)
    s.sendall(struct.pack('>H', len(pkt)) + pkt)
    data = b''
    while True:
        try: d = s.recv(4096)
        except socket.timeout: break
        if not d: break
        data += d
        if len(data) >= 2 and len(data) >= 2 + struct.unpack('>H', data[:2])[0]: break
    return data
cases = [
 ('udp_a_cname_chain.bin', udp, 'cdn.example.test', 1, 0x1a2b, True),
 ('udp_aaaa.bin', udp, 'www.example.test', 28, 0x3c4d, True),
 ('udp_nxdomain.bin', udp, 'nope.example.test', 1, 0x5e6f, True),
 ('udp_mixed_case.bin', udp, 'MIXED.example.TEST', 1, 0x7081, False),
 ('tcp_a_cname_chain.bin', tcp, 'cdn.example.test', 1, 0x92a3, False),
 ('udp_mx_nodata.bin', udp, 'www.example.test', 15, 0xb4c5, False),
]
for fn, f, name, qt, qid, edns in cases:
    r = f(q(name, qt, qid, edns))
    open(fn, 'wb').write(r)
    print(fn, len(r), r.hex())
