package trinity.flight.interop;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

/**
 * A real flight-node process, started from the binary named by {@code FLIGHT_NODE_BIN} on free
 * loopback ports, with a temporary {@code file://} storage, a token file (one namespace token,
 * one {@code *} token) and 64 KiB parts, so a table of a few megabytes has many parts.
 */
final class FlightNode implements AutoCloseable {
  static final String NS_TOKEN = "analytics-token";
  static final String ADMIN_TOKEN = "admin-token";
  static final String NAMESPACE = "analytics";
  static final String OTHER_NS = "ops";
  private static final Duration START_LIMIT = Duration.ofSeconds(30);
  private static final ObjectMapper JSON = new ObjectMapper();

  final Path dir;
  final Path storage;
  final Path log;
  final int grpcPort;
  final int httpPort;
  private final Process process;

  private FlightNode(Path dir, Path storage, Path log, int grpcPort, int httpPort, Process p) {
    this.dir = dir;
    this.storage = storage;
    this.log = log;
    this.grpcPort = grpcPort;
    this.httpPort = httpPort;
    this.process = p;
  }

  /** The binary named by FLIGHT_NODE_BIN; an AssertionError (a failure, not a skip) otherwise. */
  static Path binary() {
    String bin = System.getenv("FLIGHT_NODE_BIN");
    if (bin == null || bin.isEmpty()) {
      throw new AssertionError(
          "FLIGHT_NODE_BIN is not set: it must name a built flight-node binary "
              + "(cargo build -p flight-node; FLIGHT_NODE_BIN=$PWD/target/debug/flight-node)");
    }
    Path p = Path.of(bin);
    if (!Files.isRegularFile(p) || !Files.isExecutable(p)) {
      throw new AssertionError(
          "FLIGHT_NODE_BIN=" + bin + " is not an executable flight-node binary; "
              + "run cargo build -p flight-node");
    }
    return p;
  }

  static int freePort() throws IOException {
    try (ServerSocket s = new ServerSocket()) {
      s.bind(new InetSocketAddress("127.0.0.1", 0));
      return s.getLocalPort();
    }
  }

  static FlightNode start() throws IOException, InterruptedException {
    Path bin = binary();
    Path dir = Files.createTempDirectory("flight-interop-java-");
    Path storage = Files.createDirectories(dir.resolve("data"));
    Path tokens = dir.resolve("tokens.yaml");
    Files.writeString(
        tokens,
        "tokens:\n"
            + "  - token: " + NS_TOKEN + "\n    namespaces: [" + NAMESPACE + "]\n"
            + "  - token: " + ADMIN_TOKEN + "\n    namespaces: [\"*\"]\n");
    int grpc = freePort();
    int http = freePort();
    Path log = dir.resolve("node.log");
    ProcessBuilder pb =
        new ProcessBuilder(
                bin.toString(),
                "--listen", "127.0.0.1:" + grpc,
                "--http-listen", "127.0.0.1:" + http,
                "--storage-url", "file://" + storage,
                "--token-file", tokens.toString(),
                "--part-size", "64KiB")
            .redirectErrorStream(true)
            .redirectOutput(log.toFile());
    // The node reads every flag from FLIGHT_* variables too: none may leak in.
    Map<String, String> env = pb.environment();
    env.keySet().removeIf(k -> k.startsWith("FLIGHT_"));
    env.put("RUST_LOG", "info");
    Process p = pb.start();
    FlightNode node = new FlightNode(dir, storage, log, grpc, http, p);
    long deadline = System.nanoTime() + START_LIMIT.toNanos();
    while (System.nanoTime() < deadline) {
      if (!p.isAlive()) {
        throw new AssertionError("flight-node exited at start:\n" + node.logTail(40));
      }
      if (node.httpStatus("/readyz") == 200) {
        return node;
      }
      Thread.sleep(50);
    }
    node.close();
    throw new AssertionError("flight-node not ready within " + START_LIMIT + ":\n" + node.logTail(40));
  }

  int httpStatus(String path) {
    try {
      HttpURLConnection c =
          (HttpURLConnection) URI.create("http://127.0.0.1:" + httpPort + path).toURL().openConnection();
      c.setConnectTimeout(1000);
      c.setReadTimeout(1000);
      try {
        return c.getResponseCode();
      } finally {
        c.disconnect();
      }
    } catch (IOException e) {
      return -1;
    }
  }

  boolean alive() {
    return process.isAlive();
  }

  /** The part files a version's record (its manifest in storage) lists. */
  int parts(String ns, String name, long version) throws IOException {
    JsonNode m = JSON.readTree(storage.resolve(ns).resolve(name).resolve("v" + version + ".manifest.json").toFile());
    return m.get("parts").size();
  }

  String logTail(int lines) {
    try {
      List<String> all = Files.readAllLines(log, StandardCharsets.UTF_8);
      return String.join("\n", all.subList(Math.max(0, all.size() - lines), all.size()));
    } catch (IOException | UncheckedIOException e) {
      return "";
    }
  }

  @Override
  public void close() throws InterruptedException, IOException {
    if (process.isAlive()) {
      process.destroy();
      if (!process.waitFor(5, TimeUnit.SECONDS)) {
        process.destroyForcibly().waitFor();
      }
    }
    try (Stream<Path> walk = Files.walk(dir)) {
      List<Path> paths = new ArrayList<>(walk.sorted(Comparator.reverseOrder()).toList());
      for (Path p : paths) {
        Files.deleteIfExists(p);
      }
    }
  }
}
