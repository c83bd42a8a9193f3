"""Each topology fixture is what it claims to be, checked with redis-py alone (not Shoal).

Cluster: three masters with a replica each, hash tags spread over them, a killed master's
replica takes over. Sentinel: the sentinels name the master, a failover moves it and demotes
the old one. TLS: only a client with the CA and a client certificate gets in. ACL: the Shoal
user reaches keys under the tests' prefixes and nothing else. Valkey is Valkey. And a test
marked ``every_topology`` runs on all six, each emptied by ``redis_url``.
"""

from __future__ import annotations

import pytest
import redis
from processes import worker_env
from redis.crc import key_slot

from topologies import (
    SLOTS,
    AclTopology,
    ClusterTopology,
    SentinelTopology,
    TlsTopology,
    Topology,
    ValkeyTopology,
    command,
    info_fields,
    no_retry,
)


@pytest.mark.every_topology
def test_every_topology_runs_the_test_on_an_empty_redis(
    topology: Topology, redis_url: str, key_prefix: str, request: pytest.FixtureRequest
) -> None:
    assert request.node.callspec.id == topology.name
    assert redis_url == topology.url
    admin = topology.admin()
    assert admin.dbsize() == 0
    admin.set(f"{key_prefix}:{{q}}:probe", "1")
    assert admin.get(f"{key_prefix}:{{q}}:probe") == b"1"
    topology.flush()
    assert admin.dbsize() == 0


@pytest.mark.every_topology("valkey", "acl")
def test_the_marker_names_a_subset(topology: Topology, request: pytest.FixtureRequest) -> None:
    assert request.node.callspec.id == topology.name
    assert topology.name in {"valkey", "acl"}


def test_without_the_marker_the_topology_is_the_session_server(
    topology: Topology, redis_url: str, redis_client: redis.Redis
) -> None:
    assert topology.name == "single"
    redis_client.set("probe", "1")
    assert topology.admin().get("probe") == b"1"


def test_cluster_has_three_masters_with_a_replica_each(cluster_topology: ClusterTopology) -> None:
    ranges = cluster_topology.wait_stable()
    assert sum(r.end - r.start + 1 for r in ranges) == SLOTS
    masters = cluster_topology.masters()
    assert len(masters) == 3
    for master in masters:
        (replica,) = cluster_topology.replicas_of(master)
        repl = info_fields(cluster_topology.node_client(replica), "replication")
        assert (repl["role"], repl["master_port"]) == ("slave", str(master))
    assert cluster_topology.url.startswith("redis+cluster://127.0.0.1:")

    # Given one key per hash tag, until every master serves one
    by_master: dict[int, str] = {}
    for tag in range(100):
        by_master.setdefault(cluster_topology.master_for_key(f"{{{tag}}}:k"), f"{{{tag}}}:k")
    assert sorted(by_master) == masters
    # When the cluster client writes them, each lands on its own master, and only there
    cluster_topology.flush()
    for key in by_master.values():
        cluster_topology.admin().set(key, "1")
    for master, key in by_master.items():
        node = cluster_topology.node_client(master)
        assert node.dbsize() == 1
        assert command(node, "CLUSTER", "COUNTKEYSINSLOT", key_slot(key.encode())) == 1


def test_cluster_kill_drill_promotes_the_replica(cluster_topology: ClusterTopology) -> None:
    admin = cluster_topology.admin()
    admin.set("{drill}:k", "kept")
    old = cluster_topology.master_for_key("{drill}:k")
    (replica,) = cluster_topology.replicas_of(old)
    command(cluster_topology.node_client(old), "WAIT", 1, 5000)

    assert cluster_topology.kill_master_of("{drill}:k") == old
    assert cluster_topology.wait_failover(old) == replica
    assert cluster_topology.master_for_key("{drill}:k") == replica
    assert cluster_topology.admin().get("{drill}:k") == b"kept"

    cluster_topology.restart(old)
    assert cluster_topology.replicas_of(replica) == [old]


def test_sentinel_names_the_master_and_failover_moves_it(
    sentinel_topology: SentinelTopology,
) -> None:
    topo = sentinel_topology
    old = topo.master_port()
    assert old in topo.data_ports
    for index in range(3):
        host, port = command(
            topo.sentinel_client(index), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"
        )
        assert (host, int(port)) == (b"127.0.0.1", old)
    assert info_fields(topo.data_client(old), "replication")["role"] == "master"
    (replica,) = topo.replica_ports()
    topo.admin().set("k", "kept")
    command(topo.data_client(old), "WAIT", 1, 5000)

    new = topo.failover()

    assert new == replica
    assert topo.master_port() == new
    assert info_fields(topo.data_client(new), "replication")["role"] == "master"
    demoted = info_fields(topo.data_client(old), "replication")
    assert (demoted["role"], demoted["master_port"]) == ("slave", str(new))
    assert demoted["master_link_status"] == "up"
    assert topo.admin().get("k") == b"kept"
    assert topo.admin().connection_pool.connection_kwargs["port"] == new


def test_sentinel_kill_drill_elects_the_replica(sentinel_topology: SentinelTopology) -> None:
    topo = sentinel_topology
    old = topo.master_port()
    (replica,) = topo.replica_ports()

    assert topo.kill_master() == old
    assert topo.killed == old
    assert topo.master_port() == replica

    assert topo.restart_killed() == old
    assert topo.replica_ports() == [old]


def test_sentinels_with_a_password_refuse_clients_without_it(
    sentinel_auth_topology: SentinelTopology,
) -> None:
    topo = sentinel_auth_topology
    password = topo.settings["redis_sentinel_password"]
    assert topo.env == {"SHOAL_REDIS_SENTINEL_PASSWORD": password}
    anonymous = redis.Redis(port=topo.sentinel_ports[0], retry=no_retry())
    with pytest.raises(redis.AuthenticationError):
        anonymous.sentinel_masters()
    anonymous.close()
    # they authenticated to each other with it: each knows the other two
    for index in range(3):
        view = command(topo.sentinel_client(index), "SENTINEL", "MASTER", "mymaster")
        assert view[b"num-other-sentinels"] == b"2"
    assert topo.master_port() in topo.data_ports


def test_tls_server_takes_only_clients_with_ca_and_certificate(tls_topology: TlsTopology) -> None:
    tls = tls_topology
    assert tls.url.startswith("rediss://localhost:")
    assert tls.settings["redis_tls_verify"] is True
    env = worker_env(tls.url, tls.env)
    assert env["SHOAL_REDIS_TLS_CA_FILE"] == tls.ca_file
    assert env["SHOAL_REDIS_TLS_VERIFY"] == "true"

    refused = {
        "plaintext": redis.Redis(host="localhost", port=tls.port, retry=no_retry()),
        "no client certificate": tls.client(ssl_certfile=None, ssl_keyfile=None),
        "system CAs only": tls.client(ssl_ca_certs=None),
        "another CA": tls.client(ssl_ca_certs=tls.other_ca_file),
    }
    for what, client in refused.items():
        try:
            client.ping()
        except redis.ConnectionError:
            pass
        else:
            pytest.fail(f"the TLS server answered a client with {what}")
        finally:
            client.close()

    with redis.Redis.from_url(
        tls.url,
        ssl_ca_certs=tls.ca_file,
        ssl_certfile=tls.cert_file,
        ssl_keyfile=tls.key_file,
    ) as client:
        assert client.ping()


def test_acl_user_reaches_only_keys_under_the_test_prefixes(
    acl_topology: AclTopology, key_prefix: str
) -> None:
    acl = acl_topology
    assert acl.settings == {"redis_username": "shoal", "redis_password": acl.password}
    assert acl.env == {"SHOAL_REDIS_USERNAME": "shoal", "SHOAL_REDIS_PASSWORD": acl.password}
    assert key_prefix.startswith("t")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl.port, retry=no_retry()).ping()
    # EVALSHA is the one command Shoal's rule surely allows; the script runs no command
    sha = acl.admin().script_load("return KEYS[1]")

    with acl.user_client() as user:
        assert user.evalsha(sha, 1, f"{key_prefix}:probe") == f"{key_prefix}:probe".encode()
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.evalsha(sha, 1, "outside:probe")


def test_valkey_is_valkey(valkey_topology: ValkeyTopology) -> None:
    server = info_fields(valkey_topology.admin(), "server")
    assert server["server_name"] == "valkey"
    assert int(server["valkey_version"].split(".")[0]) >= 9
    assert valkey_topology.binary.endswith("valkey-server")
