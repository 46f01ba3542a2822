"""A throwaway certificate authority for TLS tests: CA, server (127.0.0.1/localhost) and client."""

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class TestPki:
    __test__ = False  # not a test class, despite the name

    """A throwaway CA with a server certificate for 127.0.0.1/localhost and a client certificate."""

    def __init__(self):
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_cert = self._sign("beam-pixels test CA", self.ca_key.public_key(), ca=True)
        self.server_key = ec.generate_private_key(ec.SECP256R1())
        self.server_cert = self._sign(
            "localhost",
            self.server_key.public_key(),
            san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        self.client_key = ec.generate_private_key(ec.SECP256R1())
        self.client_cert = self._sign("beam-pixels client", self.client_key.public_key())

    def _sign(self, common_name, public_key, *, ca=False, san=None):
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        issuer = subject if ca else self.ca_cert.subject
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(self.ca_key, hashes.SHA256())

    @staticmethod
    def pem(obj) -> bytes:
        if isinstance(obj, x509.Certificate):
            return obj.public_bytes(serialization.Encoding.PEM)
        return obj.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
