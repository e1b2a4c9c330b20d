package trinity.flight.interop;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static trinity.flight.interop.FlightNode.ADMIN_TOKEN;
import static trinity.flight.interop.FlightNode.NAMESPACE;
import static trinity.flight.interop.FlightNode.NS_TOKEN;
import static trinity.flight.interop.FlightNode.OTHER_NS;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.time.temporal.ChronoUnit;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Random;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.apache.arrow.flight.Action;
import org.apache.arrow.flight.ActionType;
import org.apache.arrow.flight.CallOption;
import org.apache.arrow.flight.CallOptions;
import org.apache.arrow.flight.CancelFlightInfoRequest;
import org.apache.arrow.flight.CancelFlightInfoResult;
import org.apache.arrow.flight.CancelStatus;
import org.apache.arrow.flight.Criteria;
import org.apache.arrow.flight.FlightCallHeaders;
import org.apache.arrow.flight.FlightClient;
import org.apache.arrow.flight.FlightDescriptor;
import org.apache.arrow.flight.FlightEndpoint;
import org.apache.arrow.flight.FlightInfo;
import org.apache.arrow.flight.FlightRuntimeException;
import org.apache.arrow.flight.FlightStatusCode;
import org.apache.arrow.flight.FlightStream;
import org.apache.arrow.flight.HeaderCallOption;
import org.apache.arrow.flight.Location;
import org.apache.arrow.flight.PollInfo;
import org.apache.arrow.flight.PutResult;
import org.apache.arrow.flight.RenewFlightEndpointRequest;
import org.apache.arrow.flight.Result;
import org.apache.arrow.flight.SchemaResult;
import org.apache.arrow.flight.SyncPutListener;
import org.apache.arrow.flight.Ticket;
import org.apache.arrow.flight.auth2.BearerCredentialWriter;
import org.apache.arrow.flight.impl.Flight;
import org.apache.arrow.flight.grpc.CredentialCallOption;
import org.apache.arrow.memory.ArrowBuf;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.arrow.vector.BigIntVector;
import org.apache.arrow.vector.BitVector;
import org.apache.arrow.vector.DecimalVector;
import org.apache.arrow.vector.FieldVector;
import org.apache.arrow.vector.Float4Vector;
import org.apache.arrow.vector.Float8Vector;
import org.apache.arrow.vector.IntVector;
import org.apache.arrow.vector.TimeStampMicroTZVector;
import org.apache.arrow.vector.VarCharVector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.compare.VectorEqualsVisitor;
import org.apache.arrow.vector.complex.ListVector;
import org.apache.arrow.vector.complex.impl.UnionListWriter;
import org.apache.arrow.vector.types.FloatingPointPrecision;
import org.apache.arrow.vector.types.TimeUnit;
import org.apache.arrow.vector.types.pojo.ArrowType;
import org.apache.arrow.vector.types.pojo.Field;
import org.apache.arrow.vector.types.pojo.FieldType;
import org.apache.arrow.vector.types.pojo.Schema;
import org.apache.arrow.vector.util.VectorSchemaRootAppender;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.extension.ExtendWith;
import org.junit.jupiter.api.extension.ExtensionContext;
import org.junit.jupiter.api.extension.TestWatcher;
import org.junit.jupiter.api.function.Executable;

/**
 * Interop tests of flight-node with Arrow's Java Flight client, written as a Java atom would use
 * it: DoPut of a table in several batches with the PutResult JSON parsed, DoGet by ticket,
 * GetFlightInfo and a parallel fetch of every endpoint of a multi-part version, ListFlights, the
 * JSON actions (stats, evict and a cold read, delete, renew) and the standard ones, the error codes
 * as {@link FlightStatusCode}, Handshake, and a DoGet cancelled with {@link FlightStream#cancel}.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@ExtendWith(FlightInteropTest.NodeLogOnFailure.class)
class FlightInteropTest {
  private static final ObjectMapper JSON = new ObjectMapper();
  static FlightNode node;
  private BufferAllocator allocator;
  private FlightClient client;

  private static final CallOption ADMIN = bearer(ADMIN_TOKEN);
  private static final CallOption NS = bearer(NS_TOKEN);
  private static final CallOption TIMEOUT = CallOptions.timeout(2, java.util.concurrent.TimeUnit.MINUTES);

  @BeforeAll
  void startNode() throws Exception {
    node = FlightNode.start();
    allocator = new RootAllocator();
    client = FlightClient.builder(allocator, Location.forGrpcInsecure("127.0.0.1", node.grpcPort)).build();
  }

  @AfterAll
  void stopNode() throws Exception {
    try {
      if (client != null) {
        client.close();
      }
      if (allocator != null) {
        allocator.close(); // fails on leaked buffers
      }
    } finally {
      if (node != null) {
        boolean alive = node.alive();
        boolean panicked = node.logTail(Integer.MAX_VALUE).contains("panicked");
        node.close();
        assertTrue(alive, "flight-node exited during the tests");
        assertFalse(panicked, "flight-node logged a panic during the tests");
      }
    }
  }

  /** Prints the node's log after a failed test. */
  static final class NodeLogOnFailure implements TestWatcher {
    @Override
    public void testFailed(ExtensionContext context, Throwable cause) {
      if (node != null) {
        System.err.println("--- flight-node log (" + node.log + ") after "
            + context.getDisplayName() + " failed ---\n" + node.logTail(60));
      }
    }
  }

  static CallOption bearer(String token) {
    return new CredentialCallOption(new BearerCredentialWriter(token));
  }

  static CallOption header(String name, String value) {
    FlightCallHeaders h = new FlightCallHeaders();
    h.insert(name, value);
    return new HeaderCallOption(h);
  }

  // ----- data ----------------------------------------------------------------------------------

  static final ArrowType.Timestamp TS_PARIS = new ArrowType.Timestamp(TimeUnit.MICROSECOND, "Europe/Paris");

  /** Integers, floats, strings, timestamps with a time zone, a decimal128, a list, nullables. */
  static final Schema MIXED =
      new Schema(
          List.of(
              Field.notNullable("id", new ArrowType.Int(64, true)),
              Field.nullable("qty", new ArrowType.Int(32, true)),
              Field.notNullable("price", new ArrowType.FloatingPoint(FloatingPointPrecision.DOUBLE)),
              Field.nullable("ratio", new ArrowType.FloatingPoint(FloatingPointPrecision.SINGLE)),
              Field.nullable("label", ArrowType.Utf8.INSTANCE),
              Field.notNullable("sold_at", TS_PARIS),
              Field.nullable("amount", new ArrowType.Decimal(12, 2, 128)),
              new Field(
                  "tags",
                  FieldType.nullable(ArrowType.List.INSTANCE),
                  List.of(Field.nullable(ListVector.DATA_VECTOR_NAME, new ArrowType.Int(64, true)))),
              Field.nullable("ok", ArrowType.Bool.INSTANCE)));

  static final long BASE_MICROS =
      LocalDateTime.of(2024, 3, 31, 0, 30).toEpochSecond(ZoneOffset.UTC) * 1_000_000L; // across a DST change

  /** Fills {@code root} with batch {@code batch} of {@code rows} rows, deterministic in rng. */
  static void fillMixed(VectorSchemaRoot root, Random rng, long firstId, int rows) {
    root.allocateNew();
    BigIntVector id = (BigIntVector) root.getVector("id");
    IntVector qty = (IntVector) root.getVector("qty");
    Float8Vector price = (Float8Vector) root.getVector("price");
    Float4Vector ratio = (Float4Vector) root.getVector("ratio");
    VarCharVector label = (VarCharVector) root.getVector("label");
    TimeStampMicroTZVector soldAt = (TimeStampMicroTZVector) root.getVector("sold_at");
    DecimalVector amount = (DecimalVector) root.getVector("amount");
    ListVector tags = (ListVector) root.getVector("tags");
    BitVector ok = (BitVector) root.getVector("ok");
    UnionListWriter tw = tags.getWriter();
    for (int i = 0; i < rows; i++) {
      long n = firstId + i;
      id.setSafe(i, n);
      if (rng.nextInt(7) == 0) {
        qty.setNull(i);
      } else {
        qty.setSafe(i, rng.nextInt(2000) - 1000);
      }
      price.setSafe(i, rng.nextGaussian() * 1e6);
      if (rng.nextInt(5) == 0) {
        ratio.setNull(i);
      } else {
        ratio.setSafe(i, rng.nextFloat());
      }
      switch (rng.nextInt(6)) {
        case 0 -> label.setNull(i);
        case 1 -> label.setSafe(i, new byte[0]);
        default -> label.setSafe(i, ("région-" + rng.nextInt(1000) + "-ü✓").getBytes(StandardCharsets.UTF_8));
      }
      soldAt.setSafe(i, BASE_MICROS + n * 1_000_003L);
      if (rng.nextInt(9) == 0) {
        amount.setNull(i);
      } else {
        amount.setSafe(i, BigDecimal.valueOf(rng.nextLong() % 100_000_000_000L, 2));
      }
      tw.setPosition(i);
      if (rng.nextInt(8) == 0) {
        tags.setNull(i);
      } else {
        tw.startList();
        for (int k = rng.nextInt(4); k > 0; k--) {
          tw.bigInt().writeBigInt(rng.nextLong());
        }
        tw.endList();
      }
      if (rng.nextInt(4) == 0) {
        ok.setNull(i);
      } else {
        ok.setSafe(i, rng.nextBoolean() ? 1 : 0);
      }
    }
    root.setRowCount(rows);
  }

  static final Schema WIDE =
      new Schema(
          List.of(
              Field.nullable("id", new ArrowType.Int(64, true)),
              Field.nullable("x", new ArrowType.FloatingPoint(FloatingPointPrecision.DOUBLE)),
              Field.nullable("y", new ArrowType.FloatingPoint(FloatingPointPrecision.DOUBLE))));

  static void fillWide(VectorSchemaRoot root, Random rng, long first, int rows) {
    root.allocateNew();
    BigIntVector id = (BigIntVector) root.getVector("id");
    Float8Vector x = (Float8Vector) root.getVector("x");
    Float8Vector y = (Float8Vector) root.getVector("y");
    for (int i = 0; i < rows; i++) {
      long n = first + i;
      id.setSafe(i, n);
      x.setSafe(i, n * 0.5);
      y.setSafe(i, n / 3.0);
    }
    root.setRowCount(rows);
  }

  /** What was uploaded: all batches appended into one root (owned by the test). */
  record Uploaded(Map<String, Object> putResult, VectorSchemaRoot table) implements AutoCloseable {
    String ticket() {
      return (String) putResult.get("ticket");
    }

    long version() {
      return ((Number) putResult.get("version")).longValue();
    }

    @Override
    public void close() {
      table.close();
    }
  }

  interface Filler {
    void fill(VectorSchemaRoot root, Random rng, long first, int rows);
  }

  // ----- client calls as an atom writes them --------------------------------------------------

  /**
   * DoPut of {@code batches} batches of {@code rows} rows to [ns, name], the PutResult JSON decoded.
   */
  Uploaded put(String ns, String name, Schema schema, Filler filler, long seed, int batches, int rows,
      CallOption... options) throws Exception {
    Random rng = new Random(seed);
    VectorSchemaRoot expected = VectorSchemaRoot.create(schema, allocator);
    try (VectorSchemaRoot root = VectorSchemaRoot.create(schema, allocator);
        SyncPutListener listener = new SyncPutListener()) {
      expected.allocateNew();
      FlightClient.ClientStreamListener stream =
          client.startPut(FlightDescriptor.path(ns, name), root, listener, options);
      for (int b = 0; b < batches; b++) {
        filler.fill(root, rng, (long) b * rows, rows);
        VectorSchemaRootAppender.append(expected, root);
        stream.putNext();
      }
      stream.completed();
      stream.getResult(); // waits for the server's end of the call; throws its error
      PutResult result = listener.read();
      assertNotNull(result, "DoPut answered no PutResult");
      Map<String, Object> json;
      try (result) {
        ArrowBuf md = result.getApplicationMetadata();
        byte[] bytes = new byte[(int) md.readableBytes()];
        md.getBytes(0, bytes);
        @SuppressWarnings("unchecked")
        Map<String, Object> m = JSON.readValue(bytes, Map.class);
        json = m;
      }
      assertEquals(null, listener.read(), "more than one PutResult");
      return new Uploaded(json, expected);
    } catch (Exception | Error e) {
      expected.close();
      throw e;
    }
  }

  /** DoGet of a ticket into one root (owned by the caller). */
  VectorSchemaRoot get(byte[] ticket, CallOption... options) throws Exception {
    try (FlightStream stream = client.getStream(new Ticket(ticket), options)) {
      VectorSchemaRoot out = VectorSchemaRoot.create(stream.getSchema(), allocator);
      try {
        out.allocateNew();
        while (stream.next()) {
          VectorSchemaRootAppender.append(out, stream.getRoot());
        }
        return out;
      } catch (Exception | Error e) {
        out.close();
        throw e;
      }
    }
  }

  VectorSchemaRoot get(String ticket, CallOption... options) throws Exception {
    return get(ticket.getBytes(StandardCharsets.UTF_8), options);
  }

  static void assertTableEquals(VectorSchemaRoot want, VectorSchemaRoot got) {
    assertEquals(want.getSchema(), got.getSchema(), "schema");
    assertEquals(want.getRowCount(), got.getRowCount(), "rows");
    for (int i = 0; i < want.getFieldVectors().size(); i++) {
      FieldVector w = want.getVector(i);
      FieldVector g = got.getVector(i);
      if (!VectorEqualsVisitor.vectorEquals(w, g)) {
        fail("column " + w.getName() + " differs");
      }
    }
    assertTrue(want.equals(got), "tables differ");
  }

  void assertReadsBack(Uploaded up, CallOption... options) throws Exception {
    try (VectorSchemaRoot got = get(up.ticket(), options)) {
      assertTableEquals(up.table(), got);
    }
  }

  List<JsonNode> action(String type, Object body, CallOption... options) throws Exception {
    byte[] raw =
        body == null ? new byte[0] : body instanceof byte[] b ? b : JSON.writeValueAsBytes(body);
    Iterator<Result> results = client.doAction(new Action(type, raw), options);
    List<JsonNode> out = new ArrayList<>();
    while (results.hasNext()) {
      out.add(JSON.readTree(results.next().getBody()));
    }
    return out;
  }

  static FlightRuntimeException assertCode(FlightStatusCode want, String what, Executable call) {
    FlightRuntimeException e = assertThrows(FlightRuntimeException.class, call, what);
    assertEquals(want, e.status().code(), what + ": " + e.getMessage());
    return e;
  }

  static Set<String> paths(Iterable<FlightInfo> infos) {
    Set<String> out = new TreeSet<>();
    for (FlightInfo i : infos) {
      out.add(String.join("/", i.getDescriptor().getPath()));
    }
    return out;
  }

  // ----- tests ---------------------------------------------------------------------------------

  @Test
  void putAndGetByTicket() throws Exception {
    Instant before = Instant.now();
    try (Uploaded v1 = put(NAMESPACE, "java-sales", MIXED, FlightInteropTest::fillMixed, 1, 4, 500,
            ADMIN, header("x-flight-ttl", "6h"));
        Uploaded v2 = put(NAMESPACE, "java-sales", MIXED, FlightInteropTest::fillMixed, 2, 2, 300, ADMIN)) {
      Map<String, Object> r = v1.putResult();
      assertEquals("ads1:analytics/java-sales@1", r.get("ticket"));
      assertEquals(NAMESPACE, r.get("namespace"));
      assertEquals("java-sales", r.get("name"));
      assertEquals(1, ((Number) r.get("version")).intValue());
      assertEquals(2000, ((Number) r.get("rows")).intValue());
      assertTrue(((Number) r.get("bytes")).longValue() > 0, r.toString());
      Instant expires = Instant.parse((String) r.get("expiresAt"));
      Duration ttl = Duration.between(before, expires);
      assertTrue(ttl.compareTo(Duration.ofMinutes(359)) > 0 && ttl.compareTo(Duration.ofMinutes(361)) < 0,
          "expiresAt " + expires + " is not 6h after the upload");

      assertEquals("ads1:analytics/java-sales@2", v2.ticket());
      assertEquals(600, ((Number) v2.putResult().get("rows")).intValue());
      assertFalse(v2.putResult().containsKey("expiresAt"), v2.putResult().toString());

      // The next atom only has the ticket string; the first ticket still pins version 1.
      assertReadsBack(v1, ADMIN);
      assertReadsBack(v2, ADMIN);

      SchemaResult schema = client.getSchema(FlightDescriptor.path(NAMESPACE, "java-sales"), ADMIN);
      assertEquals(MIXED, schema.getSchema());
    }
  }

  @Test
  void multiPartFlightInfoAndParallelEndpoints() throws Exception {
    try (Uploaded up = put(NAMESPACE, "java-parts", MIXED, FlightInteropTest::fillMixed, 3, 5, 2500, ADMIN)) {
      int parts = node.parts(NAMESPACE, "java-parts", up.version());
      assertTrue(parts >= 4, "stored as " + parts + " parts; --part-size 64KiB should give several");

      FlightDescriptor desc = FlightDescriptor.path(NAMESPACE, "java-parts");
      FlightInfo info = client.getInfo(desc, ADMIN);
      assertEquals(MIXED, info.getSchema());
      assertEquals(12_500, info.getRecords());
      assertTrue(info.getBytes() > 0);
      assertEquals(List.of(NAMESPACE, "java-parts"), info.getDescriptor().getPath());
      assertEquals(up.ticket(), JSON.readTree(info.getAppMetadata()).get("ticket").asText());
      List<FlightEndpoint> endpoints = info.getEndpoints();
      assertEquals(parts, endpoints.size(), "one endpoint per part");

      // Fetch every endpoint in parallel, each on the connection its location names.
      ExecutorService pool = Executors.newFixedThreadPool(4);
      List<Future<VectorSchemaRoot>> futures = new ArrayList<>();
      try {
        for (int i = 0; i < endpoints.size(); i++) {
          FlightEndpoint ep = endpoints.get(i);
          assertEquals(up.ticket() + "#" + i, new String(ep.getTicket().getBytes(), StandardCharsets.UTF_8));
          List<Location> locs = ep.getLocations();
          assertFalse(locs.isEmpty(), "endpoint " + i + " has no location");
          assertEquals(Location.reuseConnection(), locs.get(locs.size() - 1),
              "endpoint " + i + " locations " + locs);
          futures.add(pool.submit(() -> get(ep.getTicket().getBytes(), ADMIN)));
        }
        try (VectorSchemaRoot all = VectorSchemaRoot.create(MIXED, allocator)) {
          all.allocateNew();
          for (Future<VectorSchemaRoot> f : futures) {
            try (VectorSchemaRoot part = f.get()) {
              assertEquals(MIXED, part.getSchema());
              VectorSchemaRootAppender.append(all, part);
            }
          }
          futures.clear();
          assertTableEquals(up.table(), all);
        }
      } finally {
        for (Future<VectorSchemaRoot> f : futures) {
          try {
            f.get().close();
          } catch (Exception ignored) {
            // already reported by the failing assertion
          }
        }
        pool.shutdown();
      }

      // The standard Flight calls: PollFlightInfo answers a completed PollInfo,
      // CancelFlightInfo NOT_CANCELLABLE, RenewFlightEndpoint the renewed endpoint.
      PollInfo poll = client.pollInfo(desc, ADMIN);
      assertTrue(poll.getFlightDescriptor().isEmpty(), "a completed PollInfo names nothing to poll");
      assertEquals(Optional.of(1.0), poll.getProgress());
      assertEquals(info.getRecords(), poll.getFlightInfo().getRecords());
      assertEquals(parts, poll.getFlightInfo().getEndpoints().size());
      CancelFlightInfoResult cancel = client.cancelFlightInfo(new CancelFlightInfoRequest(info), ADMIN);
      assertEquals(CancelStatus.NOT_CANCELLABLE, cancel.getStatus());
      Instant later = Instant.now().plus(Duration.ofHours(72)).truncatedTo(ChronoUnit.SECONDS);
      FlightEndpoint first = endpoints.get(0);
      Location[] locations = first.getLocations().toArray(new Location[0]);
      FlightEndpoint renewed = client.renewFlightEndpoint(
          new RenewFlightEndpointRequest(new FlightEndpoint(first.getTicket(), later, locations)), ADMIN);
      assertEquals(first.getTicket(), renewed.getTicket());
      assertTrue(renewed.getExpirationTime().isPresent(), "the renewed endpoint has no expiration_time");
      assertEquals(later, expiresAt(client.getInfo(desc, ADMIN)));
      // Java's FlightEndpoint reads expiration_time as Instant.ofEpochSecond(seconds,
      // Timestamps.toNanos(ts)), i.e. twice the time since the epoch (flight-core 19.0.0), so
      // the endpoint the node answers is checked as protobuf.
      Instant later2 = later.plus(Duration.ofHours(1));
      byte[] request = new RenewFlightEndpointRequest(new FlightEndpoint(first.getTicket(), later2, locations))
          .serialize().array();
      Flight.FlightEndpoint raw = Flight.FlightEndpoint.parseFrom(
          client.doAction(new Action("RenewFlightEndpoint", request), ADMIN).next().getBody());
      assertEquals(later2.getEpochSecond(), raw.getExpirationTime().getSeconds(), raw.toString());
      assertEquals(0, raw.getExpirationTime().getNanos(), raw.toString());
      assertEquals(first.getTicket().getBytes().length, raw.getTicket().getTicket().size());
      assertEquals(later2, expiresAt(client.getInfo(desc, ADMIN)));
    }
  }

  @Test
  void listFlights() throws Exception {
    try (Uploaded a = put(NAMESPACE, "java-listed", WIDE, FlightInteropTest::fillWide, 1, 2, 100, ADMIN);
        Uploaded o = put(OTHER_NS, "java-listed", WIDE, FlightInteropTest::fillWide, 1, 2, 100, ADMIN)) {
      Iterable<FlightInfo> inNs = client.listFlights(new Criteria(NAMESPACE.getBytes(StandardCharsets.UTF_8)), ADMIN);
      Set<String> listed = paths(inNs);
      assertTrue(listed.contains("analytics/java-listed"), listed.toString());
      for (String p : listed) {
        assertTrue(p.startsWith(NAMESPACE + "/"), "ListFlights(analytics) lists " + p);
      }
      for (FlightInfo i : client.listFlights(new Criteria(NAMESPACE.getBytes(StandardCharsets.UTF_8)), ADMIN)) {
        if (i.getDescriptor().getPath().equals(List.of(NAMESPACE, "java-listed"))) {
          assertEquals(200, i.getRecords());
          assertEquals(WIDE, i.getSchema());
        }
      }

      Set<String> all = paths(client.listFlights(Criteria.ALL, ADMIN));
      assertTrue(all.contains("analytics/java-listed") && all.contains("ops/java-listed"), all.toString());

      // The namespace token sees only its namespace, also with empty criteria.
      Set<String> mine = paths(client.listFlights(Criteria.ALL, NS));
      assertTrue(mine.contains("analytics/java-listed"), mine.toString());
      for (String p : mine) {
        assertTrue(p.startsWith(NAMESPACE + "/"), "the namespace token lists " + p);
      }
    }
  }

  static boolean cached(JsonNode stats, String ns, String name, long version) {
    for (JsonNode t : stats.get("tables")) {
      if (t.get("namespace").asText().equals(ns) && t.get("name").asText().equals(name)
          && t.get("version").asLong() == version) {
        return true;
      }
    }
    return false;
  }

  /** The version's lease as the node's JSON metadata in a FlightInfo states it. */
  static Instant expiresAt(FlightInfo info) throws Exception {
    return Instant.parse(JSON.readTree(info.getAppMetadata()).get("expiresAt").asText());
  }

  JsonNode stats(CallOption... options) throws Exception {
    List<JsonNode> r = action("stats", null, options);
    assertEquals(1, r.size(), "stats results");
    return r.get(0);
  }

  @Test
  void actions() throws Exception {
    try (Uploaded v1 = put(NAMESPACE, "java-actions", MIXED, FlightInteropTest::fillMixed, 4, 3, 1500,
            ADMIN, header("x-flight-ttl", "1h"));
        Uploaded v2 = put(NAMESPACE, "java-actions", MIXED, FlightInteropTest::fillMixed, 5, 1, 10,
            ADMIN, header("x-flight-ttl", "1h"))) {
      Set<String> names = new TreeSet<>();
      for (ActionType t : client.listActions(ADMIN)) {
        names.add(t.getType());
      }
      assertTrue(names.containsAll(List.of("stats", "evict", "delete", "renew", "RenewFlightEndpoint",
          "CancelFlightInfo")), names.toString());

      // stats: the * token sees the counters and the tables in memory; a namespace token its
      // tables only.
      JsonNode s = stats(ADMIN);
      for (String k : List.of("hits", "misses", "evictions")) {
        assertTrue(s.has(k) && s.get(k).isIntegralNumber(), s.toString());
      }
      assertTrue(s.get("storageUrl").asText().startsWith("file://"), s.toString());
      assertTrue(cached(s, NAMESPACE, "java-actions", 1), s.toString());
      JsonNode ns = stats(NS);
      assertFalse(ns.has("hits"), ns.toString());
      assertTrue(cached(ns, NAMESPACE, "java-actions", 1), ns.toString());
      for (JsonNode t : ns.get("tables")) {
        assertEquals(NAMESPACE, t.get("namespace").asText(), ns.toString());
      }

      // evict, then DoGet reads the version back from storage.
      JsonNode ev = action("evict", Map.of("namespace", NAMESPACE, "name", "java-actions", "version", 1), ADMIN).get(0);
      assertEquals(1, ev.get("evicted").asInt(), ev.toString());
      s = stats(ADMIN);
      assertFalse(cached(s, NAMESPACE, "java-actions", 1), s.toString());
      long misses = s.get("misses").asLong();
      assertReadsBack(v1, ADMIN);
      s = stats(ADMIN);
      assertTrue(s.get("misses").asLong() > misses && cached(s, NAMESPACE, "java-actions", 1), s.toString());
      action("evict", Map.of("namespace", NAMESPACE, "name", "java-actions"), ADMIN);
      assertEquals(10, client.getInfo(FlightDescriptor.path(NAMESPACE, "java-actions"), ADMIN).getRecords());
      assertReadsBack(v2, ADMIN);

      // renew extends version 1's lease.
      Instant old = Instant.parse((String) v1.putResult().get("expiresAt"));
      JsonNode renewed = action("renew", Map.of("ticket", v1.ticket(), "ttl", "48h"), ADMIN).get(0);
      assertEquals(v1.ticket(), renewed.get("ticket").asText());
      assertEquals(1, renewed.get("version").asInt());
      Instant now = Instant.parse(renewed.get("expiresAt").asText());
      assertTrue(now.isAfter(old.plus(Duration.ofHours(40))), old + " -> " + now);
      assertCode(FlightStatusCode.INVALID_ARGUMENT, "renew with a bad ttl",
          () -> action("renew", Map.of("ticket", v1.ticket(), "ttl", "soon"), ADMIN));
      assertCode(FlightStatusCode.NOT_FOUND, "renew of an unknown version",
          () -> action("renew", Map.of("ticket", "ads1:analytics/java-actions@9", "ttl", "1h"), ADMIN));

      // delete version 1: its ticket is NOT_FOUND from then on, version 2 stays.
      JsonNode del = action("delete", Map.of("namespace", NAMESPACE, "name", "java-actions", "version", 1), ADMIN).get(0);
      assertEquals("{\"deleted\":[1]}", del.toString());
      assertCode(FlightStatusCode.NOT_FOUND, "DoGet of a deleted version", () -> get(v1.ticket(), ADMIN).close());
      assertCode(FlightStatusCode.NOT_FOUND, "renew of a deleted version",
          () -> action("renew", Map.of("ticket", v1.ticket(), "ttl", "1h"), ADMIN));
      assertReadsBack(v2, ADMIN);
      assertCode(FlightStatusCode.NOT_FOUND, "second delete",
          () -> action("delete", Map.of("namespace", NAMESPACE, "name", "java-actions", "version", 1), ADMIN));
      try (Uploaded v3 = put(NAMESPACE, "java-actions", WIDE, FlightInteropTest::fillWide, 1, 1, 5, ADMIN)) {
        assertEquals(3, v3.version(), "an upload after a delete never reuses its number");
      }
    }
  }

  @Test
  void errorCodes() throws Exception {
    try (Uploaded mine = put(NAMESPACE, "java-errors", WIDE, FlightInteropTest::fillWide, 1, 1, 10, ADMIN);
        Uploaded other = put(OTHER_NS, "java-errors", WIDE, FlightInteropTest::fillWide, 1, 1, 10, ADMIN)) {
      // Malformed tickets and descriptors are INVALID_ARGUMENT.
      for (String bad : List.of("not-a-ticket", "ads1:analytics/java-errors", "ads1:Analytics/java-errors@1",
          "ads1:analytics/java-errors@x", "ads1:analytics/java-errors@1#zz", "")) {
        assertCode(FlightStatusCode.INVALID_ARGUMENT, "DoGet " + bad, () -> get(bad, ADMIN).close());
      }
      assertCode(FlightStatusCode.INVALID_ARGUMENT, "GetFlightInfo of an invalid namespace",
          () -> client.getInfo(FlightDescriptor.path("Not_A_Label", "x"), ADMIN));
      assertCode(FlightStatusCode.INVALID_ARGUMENT, "DoPut to an invalid name",
          () -> put(NAMESPACE, "Bad Name", WIDE, FlightInteropTest::fillWide, 1, 1, 10, ADMIN).close());
      assertCode(FlightStatusCode.INVALID_ARGUMENT, "DoPut with an invalid x-flight-ttl",
          () -> put(NAMESPACE, "java-errors", WIDE, FlightInteropTest::fillWide, 1, 1, 10, ADMIN,
              header("x-flight-ttl", "forever")).close());
      assertCode(FlightStatusCode.INVALID_ARGUMENT, "evict with a body that is not JSON",
          () -> action("evict", "{not json".getBytes(StandardCharsets.UTF_8), ADMIN));

      // Unknown versions and datasets are NOT_FOUND.
      assertCode(FlightStatusCode.NOT_FOUND, "DoGet of an unknown version",
          () -> get("ads1:analytics/java-errors@99", ADMIN).close());
      assertCode(FlightStatusCode.NOT_FOUND, "DoGet of an unknown dataset",
          () -> get("ads1:analytics/no-such-dataset@1", ADMIN).close());
      assertCode(FlightStatusCode.NOT_FOUND, "GetFlightInfo of an unknown dataset",
          () -> client.getInfo(FlightDescriptor.path(NAMESPACE, "no-such-dataset"), ADMIN));

      // No token (or a wrong one) is UNAUTHENTICATED on every kind of call.
      for (CallOption[] anon : List.of(new CallOption[] {TIMEOUT}, new CallOption[] {bearer("wrong")})) {
        assertCode(FlightStatusCode.UNAUTHENTICATED, "DoGet without a valid token",
            () -> get(mine.ticket(), anon).close());
        assertCode(FlightStatusCode.UNAUTHENTICATED, "GetFlightInfo without a valid token",
            () -> client.getInfo(FlightDescriptor.path(NAMESPACE, "java-errors"), anon));
        assertCode(FlightStatusCode.UNAUTHENTICATED, "ListFlights without a valid token",
            () -> paths(client.listFlights(Criteria.ALL, anon)));
        assertCode(FlightStatusCode.UNAUTHENTICATED, "DoPut without a valid token",
            () -> put(NAMESPACE, "java-errors", WIDE, FlightInteropTest::fillWide, 1, 1, 10, anon).close());
        assertCode(FlightStatusCode.UNAUTHENTICATED, "stats without a valid token",
            () -> action("stats", null, anon));
      }

      // The namespace token on another namespace is PERMISSION_DENIED, which Java's client
      // names UNAUTHORIZED; on its own namespace it works.
      assertCode(FlightStatusCode.UNAUTHORIZED, "DoGet of another namespace", () -> get(other.ticket(), NS).close());
      assertCode(FlightStatusCode.UNAUTHORIZED, "GetFlightInfo of another namespace",
          () -> client.getInfo(FlightDescriptor.path(OTHER_NS, "java-errors"), NS));
      assertCode(FlightStatusCode.UNAUTHORIZED, "ListFlights of another namespace",
          () -> paths(client.listFlights(new Criteria(OTHER_NS.getBytes(StandardCharsets.UTF_8)), NS)));
      assertCode(FlightStatusCode.UNAUTHORIZED, "DoPut to another namespace",
          () -> put(OTHER_NS, "java-errors", WIDE, FlightInteropTest::fillWide, 1, 1, 10, NS).close());
      assertCode(FlightStatusCode.UNAUTHORIZED, "evict in another namespace",
          () -> action("evict", Map.of("namespace", OTHER_NS, "name", "java-errors"), NS));
      assertCode(FlightStatusCode.UNAUTHORIZED, "delete in another namespace",
          () -> action("delete", Map.of("namespace", OTHER_NS, "name", "java-errors"), NS));
      assertCode(FlightStatusCode.UNAUTHORIZED, "renew in another namespace",
          () -> action("renew", Map.of("ticket", other.ticket(), "ttl", "1h"), NS));
      assertReadsBack(mine, NS);
      // Nothing was changed by the refused calls.
      assertReadsBack(other, ADMIN);
      assertEquals(10, client.getInfo(FlightDescriptor.path(OTHER_NS, "java-errors"), ADMIN).getRecords());
    }
  }

  /** Handshake with basic credentials whose password is the token, as Java's client offers. */
  @Test
  void handshake() throws Exception {
    for (String token : List.of(ADMIN_TOKEN, NS_TOKEN)) {
      try (BufferAllocator a = allocator.newChildAllocator("handshake", 0, Long.MAX_VALUE);
          FlightClient c = FlightClient.builder(a, Location.forGrpcInsecure("127.0.0.1", node.grpcPort)).build()) {
        Optional<CredentialCallOption> cred = c.authenticateBasicToken("", token);
        assertTrue(cred.isPresent(), "Handshake answered no bearer token");
        FlightInfo info = null;
        try (Uploaded up = put(NAMESPACE, "java-handshake", WIDE, FlightInteropTest::fillWide, 1, 2, 50, ADMIN)) {
          info = c.getInfo(FlightDescriptor.path(NAMESPACE, "java-handshake"), cred.get());
          assertEquals(100, info.getRecords());
          try (FlightStream s = c.getStream(new Ticket(up.ticket().getBytes(StandardCharsets.UTF_8)), cred.get())) {
            long rows = 0;
            while (s.next()) {
              rows += s.getRoot().getRowCount();
            }
            assertEquals(100, rows);
          }
        }
      }
    }
    try (BufferAllocator a = allocator.newChildAllocator("handshake", 0, Long.MAX_VALUE);
        FlightClient c = FlightClient.builder(a, Location.forGrpcInsecure("127.0.0.1", node.grpcPort)).build()) {
      assertCode(FlightStatusCode.UNAUTHENTICATED, "Handshake with a wrong token",
          () -> c.authenticateBasicToken("", "wrong"));
    }
  }

  /**
   * A DoGet of a large table cancelled with FlightStream.cancel after its first batch, hot and
   * cold: the node goes on serving, that table included.
   */
  @Test
  void cancelMidStream() throws Exception {
    try (Uploaded big = put(NAMESPACE, "java-big", WIDE, FlightInteropTest::fillWide, 1, 10, 100_000, ADMIN)) {
      long total = big.table().getRowCount();
      for (boolean cold : List.of(false, true)) {
        if (cold) {
          action("evict", Map.of("namespace", NAMESPACE, "name", "java-big"), ADMIN);
        }
        long read = 0;
        FlightStream stream = client.getStream(new Ticket(big.ticket().getBytes(StandardCharsets.UTF_8)), ADMIN);
        FlightRuntimeException after = null;
        try {
          assertTrue(stream.next(), "no first batch");
          read += stream.getRoot().getRowCount();
          stream.cancel("the atom needs no more rows", null);
          while (stream.next()) {
            read += stream.getRoot().getRowCount();
          }
        } catch (FlightRuntimeException e) {
          after = e;
        } finally {
          stream.close();
        }
        assertNotNull(after, "reading on after cancel() ended without an error (cold=" + cold + ", "
            + read + " of " + total + " rows)");
        assertEquals(FlightStatusCode.CANCELLED, after.status().code(), after.toString());
        assertTrue(read < total, "the whole table arrived before the cancel took effect");

        // The node keeps serving: a small call, then the same table in full.
        stats(ADMIN);
        assertReadsBack(big, ADMIN);
      }
      assertTrue(node.alive(), "flight-node exited");
    }
  }
}
