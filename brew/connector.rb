# Homebrew formula for connector: reach Docker container IPs from the Mac.
#
#   brew install --HEAD ./brew/connector.rb      # or from a tap
#   sudo brew services start connector           # root: it creates a utun
#
# scripts/check-formula checks this file's syntax and that the service's
# command line is one the connector CLI accepts.
class Connector < Formula
  desc "Reach Docker container IPs from the Mac through a WireGuard tunnel"
  homepage "https://github.com/connector-dev/connector"
  url "https://github.com/connector-dev/connector.git",
      tag: "v0.1.0"
  license any_of: ["MIT", "Apache-2.0"]
  head "https://github.com/connector-dev/connector.git", branch: "main"

  depends_on "rust" => :build
  depends_on :macos

  def install
    system "cargo", "install", *std_cargo_args(path: "host")

    # `connector completions bash|zsh|fish` and `connector man` print them.
    generate_completions_from_executable(bin/"connector", "completions")
    (man1/"connector.1").write Utils.safe_popen_read(bin/"connector", "man")

    # The daemon builds the agent image from these when the release image
    # cannot be pulled. The whole workspace goes along (host included) so that
    # `cargo build --locked -p connector-agent` works with the shipped lock file.
    (pkgshare/"agent-src").install "Cargo.toml", "Cargo.lock", "host", "protocol", "tunnel", "vm-agent"

    # Homebrew keeps an edited etc file on upgrade and puts the new one next
    # to it as config.toml.default.
    (buildpath/"config.toml").write config_template
    (etc/"connector").install "config.toml"
  end

  def post_install
    (var/"log").mkpath
  end

  # Every key is optional; the commented values are the defaults.
  def config_template
    <<~TOML
      # connector configuration. Every key is optional: the commented values
      # below are the defaults. After a change:
      #   sudo brew services restart connector

      # Docker engine. Unset: the logged-in user's docker context, then
      # Docker Desktop, Colima, Rancher Desktop, /var/run/docker.sock.
      # docker_host = "unix:///Users/me/.docker/run/docker.sock"

      # MTU of the tunnel (Docker Desktop relays UDP up to ~1444 bytes).
      # mtu = 1420

      # Which Docker networks to route (glob patterns on network names).
      # [networks]
      # include = ["*"]
      # exclude = []
    TOML
  end

  def caveats
    <<~EOS
      connector must run as root (it creates a utun interface and routes):
        sudo brew services start connector
      Configuration: #{etc}/connector/config.toml
      Logs:          #{var}/log/connector.log
      Status:        connector status --config #{etc}/connector/config.toml
    EOS
  end

  service do
    run [opt_bin/"connector", "run", "--config", etc/"connector/config.toml"]
    require_root true
    keep_alive true
    log_path var/"log/connector.log"
    error_log_path var/"log/connector.log"
  end

  test do
    assert_match(/^connector \d+\.\d+\.\d+/, shell_output("#{bin}/connector --version"))

    # Without root, `connector run` stops at once and says how to start it.
    output = shell_output("#{bin}/connector run 2>&1", 1)
    assert_match "sudo brew services start connector", output

    # A bad key is named (doctor checks the config as its first step).
    (testpath/"bad.toml").write "no_such_key = 1\n"
    output = shell_output("#{bin}/connector doctor --config #{testpath}/bad.toml 2>&1", 1)
    assert_match "no_such_key", output

    assert_match "complete", shell_output("#{bin}/connector completions bash")

    # The shipped config is accepted: status may fail, but not over the config.
    output = shell_output("#{bin}/connector status --config #{etc}/connector/config.toml 2>&1 || true")
    refute_match(/config (file|key)/, output)
  end
end
