"""A credvault client in Python, built from proto/ with grpcio-tools.

Run by tests/python_client.rs against a live credvault, and shown in the README:

    python -m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen \
        $(find proto -name '*.proto')
    PYTHONPATH=gen python tests/python/client.py 127.0.0.1:50051 "$TOKEN"

It creates an account, reads it back masked, then holds the account's only slot and
asks for a second one, and decodes the google.rpc.ErrorInfo that explains the refusal.
Every step prints one line; any surprise exits non-zero.
"""

import sys

import grpc
from google.rpc import error_details_pb2, status_pb2

from credvault.v1 import accounts_pb2, accounts_pb2_grpc
from credvault.v1 import credentials_pb2, credentials_pb2_grpc


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of a refusal (in the grpc-status-details-bin trailer)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    raise SystemExit("the refusal carried no ErrorInfo")


def main(addr: str, token: str, email: str, upstream_token: str) -> None:
    auth = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(addr) as channel:
        accounts = accounts_pb2_grpc.AccountsStub(channel)
        credentials = credentials_pb2_grpc.CredentialsStub(channel)

        accounts.CreateAccount(
            accounts_pb2.CreateAccountRequest(
                provider="pixverse",
                email=email,
                password="py-client-password",
                max_jobs=1,
                jwt=accounts_pb2.JwtInput(token=upstream_token),
            ),
            metadata=auth,
        )
        account = accounts.GetAccount(
            accounts_pb2.GetAccountRequest(provider="pixverse", email=email),
            metadata=auth,
        )
        print(f"masked password={account.password} token={account.jwt.token}")

        lease = credentials.AcquireLease(
            credentials_pb2.AcquireLeaseRequest(provider="pixverse", email=email),
            metadata=auth,
        )
        try:
            credentials.AcquireLease(
                credentials_pb2.AcquireLeaseRequest(provider="pixverse", email=email),
                metadata=auth,
            )
        except grpc.RpcError as error:
            info = error_info(error)
            print(f"refused code={error.code().name} reason={info.reason}")
            for key in sorted(info.metadata):
                print(f"metadata {key}={info.metadata[key]}")
        else:
            raise SystemExit("a second lease on a maxJobs 1 account was granted")
        credentials.ReleaseLease(
            credentials_pb2.ReleaseLeaseRequest(lease_id=lease.lease_id), metadata=auth
        )
        print("released")


if __name__ == "__main__":
    main(*sys.argv[1:5])
