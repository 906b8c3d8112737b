# sandhost on every client node: one agent per node, its state on the node, drained by SIGTERM.
# See deploy/README.md for each choice. The bearer token comes from Nomad Variables
# (nomad var put nomad/jobs/sandhost token=...).
job "sandhost" {
  type = "system"

  group "agent" {
    # A restarted agent re-adopts the sandboxes an earlier one left (their state is on the node).
    restart {
      attempts = 10
      interval = "10m"
      delay    = "5s"
      mode     = "delay"
    }

    network {
      port "grpc" {
        static = 5008
      }
      port "http" {
        static = 5009
      }
    }

    service {
      name     = "sandhost"
      port     = "grpc"
      provider = "nomad"

      # Passing only while the node admits new sandboxes.
      check {
        name     = "ready"
        type     = "http"
        port     = "http"
        path     = "/health/ready"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "sandhost" {
      # Namespaces, mounts and cgroups for every sandbox: the process needs root on the host.
      driver = "raw_exec"

      config {
        command = "/usr/bin/sandhost"
        args    = ["serve"]
      }

      # SIGTERM drains. Nomad's default kill_timeout (5s) would cut any drain short; this is the
      # drain budget: SHUTDOWN_DRAIN_TIMEOUT 10m + FORCE_SHUTDOWN_TIMEOUT 30s + teardown 40s = 670s,
      # plus a 50s margin. (A client's max_kill_timeout must be at least as long.)
      kill_signal  = "SIGTERM"
      kill_timeout = "720s"

      env {
        SANDHOST_LISTEN        = "0.0.0.0:5008"
        SANDHOST_HTTP_LISTEN   = "0.0.0.0:5009"
        SANDHOST_STATE_DIR     = "/var/lib/sandhost"
        SANDHOST_LOG_FORMAT    = "json"
        SHUTDOWN_DRAIN_TIMEOUT = "10m"
        FORCE_SHUTDOWN_TIMEOUT = "30s"
        # = kill_timeout, so the agent warns (and its metrics say) when the two disagree.
        SANDHOST_SUPERVISOR_STOP_TIMEOUT = "720s"
      }

      template {
        data        = "SANDHOST_TOKEN={{ with nomadVar \"nomad/jobs/sandhost\" }}{{ .token }}{{ end }}"
        destination = "secrets/token.env"
        env         = true
      }

      resources {
        cpu    = 100
        memory = 128
      }
    }
  }
}
