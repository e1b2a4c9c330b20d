// Interop tests of flight-node with arrow-go's Flight client, written as a Go atom would use
// it: DoPut of a table in several batches with the PutResult JSON parsed, DoGet by ticket,
// GetFlightInfo and a parallel fetch of every endpoint of a multi-part version, ListFlights,
// the JSON actions (stats, evict and a cold read, delete, renew) and the standard ones, the
// error codes as grpc-go surfaces them, Handshake, and a DoGet cancelled mid-stream.
package interop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/decimal128"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const reuseConnection = "arrow-flight-reuse-connection://?"

// PutResult is the JSON the node puts in the PutResult's app_metadata.
type PutResult struct {
	Ticket    string  `json:"ticket"`
	Namespace string  `json:"namespace"`
	Name      string  `json:"name"`
	Version   int64   `json:"version"`
	Rows      int64   `json:"rows"`
	Bytes     int64   `json:"bytes"`
	ExpiresAt *string `json:"expiresAt"`
}

// ----- data ---------------------------------------------------------------------------------

// mixedSchema has every kind of column the tests care about: integers, floats, strings,
// timestamps with a time zone, a decimal128, a list and nullable columns.
var mixedSchema = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64, Nullable: false},
	{Name: "qty", Type: arrow.PrimitiveTypes.Int32, Nullable: true},
	{Name: "price", Type: arrow.PrimitiveTypes.Float64, Nullable: false},
	{Name: "ratio", Type: arrow.PrimitiveTypes.Float32, Nullable: true},
	{Name: "label", Type: arrow.BinaryTypes.String, Nullable: true},
	{Name: "sold_at", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "Europe/Paris"}, Nullable: false},
	{Name: "amount", Type: &arrow.Decimal128Type{Precision: 12, Scale: 2}, Nullable: true},
	{Name: "tags", Type: arrow.ListOf(arrow.PrimitiveTypes.Int64), Nullable: true},
	{Name: "ok", Type: arrow.FixedWidthTypes.Boolean, Nullable: true},
}, nil)

// mixedBatches builds `batches` record batches of `rows` rows each, deterministic in seed.
func mixedBatches(t *testing.T, mem memory.Allocator, seed int64, batches, rows int) []arrow.RecordBatch {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	b := array.NewRecordBuilder(mem, mixedSchema)
	defer b.Release()
	base := time.Date(2024, 3, 31, 0, 30, 0, 0, time.UTC).UnixMicro() // across a DST change
	var out []arrow.RecordBatch
	id := int64(0)
	for i := 0; i < batches; i++ {
		for r := 0; r < rows; r++ {
			b.Field(0).(*array.Int64Builder).Append(id)
			if rng.Intn(7) == 0 {
				b.Field(1).(*array.Int32Builder).AppendNull()
			} else {
				b.Field(1).(*array.Int32Builder).Append(int32(rng.Intn(2000) - 1000))
			}
			b.Field(2).(*array.Float64Builder).Append(rng.NormFloat64() * 1e6)
			if rng.Intn(5) == 0 {
				b.Field(3).(*array.Float32Builder).AppendNull()
			} else {
				b.Field(3).(*array.Float32Builder).Append(rng.Float32())
			}
			switch rng.Intn(6) {
			case 0:
				b.Field(4).(*array.StringBuilder).AppendNull()
			case 1:
				b.Field(4).(*array.StringBuilder).Append("")
			default:
				b.Field(4).(*array.StringBuilder).Append(fmt.Sprintf("région-%d-ü✓", rng.Intn(1000)))
			}
			b.Field(5).(*array.TimestampBuilder).Append(arrow.Timestamp(base + id*1_000_003))
			if rng.Intn(9) == 0 {
				b.Field(6).(*array.Decimal128Builder).AppendNull()
			} else {
				b.Field(6).(*array.Decimal128Builder).Append(decimal128.FromI64(rng.Int63n(2e11) - 1e11))
			}
			lb := b.Field(7).(*array.ListBuilder)
			if rng.Intn(8) == 0 {
				lb.AppendNull()
			} else {
				lb.Append(true)
				vb := lb.ValueBuilder().(*array.Int64Builder)
				for k := rng.Intn(4); k > 0; k-- {
					vb.Append(rng.Int63())
				}
			}
			if rng.Intn(4) == 0 {
				b.Field(8).(*array.BooleanBuilder).AppendNull()
			} else {
				b.Field(8).(*array.BooleanBuilder).Append(rng.Intn(2) == 0)
			}
			id++
		}
		out = append(out, b.NewRecordBatch())
	}
	return out
}

var wideSchema = arrow.NewSchema([]arrow.Field{
	{Name: "id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "x", Type: arrow.PrimitiveTypes.Float64},
	{Name: "y", Type: arrow.PrimitiveTypes.Float64},
}, nil)

// wideBatches builds a table of batches*rows rows of 24 bytes each.
func wideBatches(mem memory.Allocator, batches, rows int) []arrow.RecordBatch {
	b := array.NewRecordBuilder(mem, wideSchema)
	defer b.Release()
	var out []arrow.RecordBatch
	for i := 0; i < batches; i++ {
		for r := 0; r < rows; r++ {
			n := int64(i*rows + r)
			b.Field(0).(*array.Int64Builder).Append(n)
			b.Field(1).(*array.Float64Builder).Append(float64(n) * 0.5)
			b.Field(2).(*array.Float64Builder).Append(float64(n) / 3)
		}
		out = append(out, b.NewRecordBatch())
	}
	return out
}

func release(recs []arrow.RecordBatch) {
	for _, r := range recs {
		r.Release()
	}
}

func rowsOf(recs []arrow.RecordBatch) int64 {
	n := int64(0)
	for _, r := range recs {
		n += r.NumRows()
	}
	return n
}

// ----- client calls as an atom writes them ---------------------------------------------------

func pathDescriptor(ns, name string) *flight.FlightDescriptor {
	return &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{ns, name}}
}

// put uploads the batches to [ns, name] with DoPut and decodes the PutResult JSON. ttl, when
// not empty, travels as the x-flight-ttl header.
func put(ctx context.Context, c flight.Client, ns, name string, schema *arrow.Schema,
	batches []arrow.RecordBatch, ttl string) (PutResult, error) {
	if ttl != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-flight-ttl", ttl)
	}
	stream, err := c.DoPut(ctx)
	if err != nil {
		return PutResult{}, err
	}
	w := flight.NewRecordWriter(stream, ipc.WithSchema(schema))
	w.SetFlightDescriptor(pathDescriptor(ns, name))
	var sendErr error
	for _, b := range batches {
		if sendErr = w.Write(b); sendErr != nil {
			break
		}
	}
	if sendErr == nil {
		sendErr = w.Close()
	}
	// A refused upload ends the stream: Send then answers io.EOF and the status arrives
	// with Recv.
	if err := stream.CloseSend(); err != nil && sendErr == nil {
		sendErr = err
	}
	var results []*flight.PutResult
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return PutResult{}, err
		}
		results = append(results, r)
	}
	if sendErr != nil && !errors.Is(sendErr, io.EOF) {
		return PutResult{}, sendErr
	}
	if len(results) != 1 {
		return PutResult{}, fmt.Errorf("DoPut answered %d PutResults, want 1", len(results))
	}
	var pr PutResult
	if err := json.Unmarshal(results[0].AppMetadata, &pr); err != nil {
		return PutResult{}, fmt.Errorf("PutResult app_metadata %q is not the JSON answer: %w",
			results[0].AppMetadata, err)
	}
	return pr, nil
}

// get reads a ticket with DoGet into a table.
func get(ctx context.Context, c flight.Client, ticket []byte) (arrow.Table, error) {
	stream, err := c.DoGet(ctx, &flight.Ticket{Ticket: ticket})
	if err != nil {
		return nil, err
	}
	rdr, err := flight.NewRecordReader(stream)
	if err != nil {
		return nil, err
	}
	defer rdr.Release()
	var recs []arrow.RecordBatch
	defer func() { release(recs) }()
	for rdr.Next() {
		r := rdr.RecordBatch()
		r.Retain()
		recs = append(recs, r)
	}
	if err := rdr.Err(); err != nil {
		return nil, err
	}
	return array.NewTableFromRecords(rdr.Schema(), recs), nil
}

func mustPut(t *testing.T, ctx context.Context, c flight.Client, ns, name string,
	schema *arrow.Schema, batches []arrow.RecordBatch, ttl string) PutResult {
	t.Helper()
	pr, err := put(ctx, c, ns, name, schema, batches, ttl)
	if err != nil {
		t.Fatalf("DoPut %s/%s: %v", ns, name, err)
	}
	return pr
}

func mustGet(t *testing.T, ctx context.Context, c flight.Client, ticket string) arrow.Table {
	t.Helper()
	tbl, err := get(ctx, c, []byte(ticket))
	if err != nil {
		t.Fatalf("DoGet %s: %v", ticket, err)
	}
	t.Cleanup(tbl.Release)
	return tbl
}

func flightInfo(t *testing.T, ctx context.Context, c flight.Client, ns, name string) *flight.FlightInfo {
	t.Helper()
	info, err := c.GetFlightInfo(ctx, pathDescriptor(ns, name))
	if err != nil {
		t.Fatalf("GetFlightInfo [%s, %s]: %v", ns, name, err)
	}
	return info
}

// assertTableEqual fails unless got has want's schema (names, types, nullability, metadata)
// and the same values, whatever the batch boundaries.
func assertTableEqual(t *testing.T, want *arrow.Schema, wantRecs []arrow.RecordBatch, got arrow.Table) {
	t.Helper()
	if !got.Schema().Equal(want) {
		t.Fatalf("schema differs:\nwant %s\ngot  %s", want, got.Schema())
	}
	if got.Schema().Metadata().String() != want.Metadata().String() {
		t.Fatalf("schema metadata differs: want %v, got %v", want.Metadata(), got.Schema().Metadata())
	}
	wt := array.NewTableFromRecords(want, wantRecs)
	defer wt.Release()
	if wt.NumRows() != got.NumRows() {
		t.Fatalf("rows: want %d, got %d", wt.NumRows(), got.NumRows())
	}
	if !array.TableEqual(wt, got) {
		for i := 0; i < int(wt.NumCols()); i++ {
			if !array.ChunkedEqual(wt.Column(i).Data(), got.Column(i).Data()) {
				t.Fatalf("column %q differs", wt.Schema().Field(i).Name)
			}
		}
		t.Fatalf("tables differ")
	}
}

func code(err error) codes.Code { return status.Code(err) }

func expectCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want %s", what, want)
	}
	if got := code(err); got != want {
		t.Fatalf("%s: code %s (%v), want %s", what, got, err, want)
	}
}

// ----- tests ---------------------------------------------------------------------------------

func TestPutAndGetByTicket(t *testing.T) {
	ctx := adminContext(t)
	c := NewClient(t)
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	recs := mixedBatches(t, mem, 1, 4, 500)
	defer release(recs)

	before := time.Now()
	pr := mustPut(t, ctx, c, Namespace, "go-sales", mixedSchema, recs, "6h")
	if pr.Ticket != "ads1:analytics/go-sales@1" || pr.Namespace != Namespace || pr.Name != "go-sales" ||
		pr.Version != 1 || pr.Rows != 2000 || pr.Bytes <= 0 {
		t.Fatalf("PutResult %+v", pr)
	}
	if pr.ExpiresAt == nil {
		t.Fatalf("PutResult has no expiresAt although x-flight-ttl was sent: %+v", pr)
	}
	exp, err := time.Parse(time.RFC3339Nano, *pr.ExpiresAt)
	if err != nil {
		t.Fatalf("expiresAt %q: %v", *pr.ExpiresAt, err)
	}
	if d := exp.Sub(before); d < 6*time.Hour-time.Minute || d > 6*time.Hour+time.Minute {
		t.Fatalf("expiresAt %s is not 6h after the upload", exp)
	}

	// The next atom only has the ticket string.
	got := mustGet(t, ctx, c, pr.Ticket)
	assertTableEqual(t, mixedSchema, recs, got)

	// A second upload is version 2; the first ticket still pins version 1.
	recs2 := mixedBatches(t, mem, 2, 2, 300)
	defer release(recs2)
	pr2 := mustPut(t, ctx, c, Namespace, "go-sales", mixedSchema, recs2, "")
	if pr2.Version != 2 || pr2.Ticket != "ads1:analytics/go-sales@2" || pr2.Rows != 600 || pr2.ExpiresAt != nil {
		t.Fatalf("second PutResult %+v", pr2)
	}
	assertTableEqual(t, mixedSchema, recs, mustGet(t, ctx, c, pr.Ticket))
	assertTableEqual(t, mixedSchema, recs2, mustGet(t, ctx, c, pr2.Ticket))

	// GetSchema names the newest version's schema.
	sr, err := c.GetSchema(ctx, pathDescriptor(Namespace, "go-sales"))
	if err != nil {
		t.Fatalf("GetSchema: %v", err)
	}
	s, err := flight.DeserializeSchema(sr.Schema, mem)
	if err != nil {
		t.Fatalf("decoding GetSchema's schema: %v", err)
	}
	if !s.Equal(mixedSchema) {
		t.Fatalf("GetSchema: %s", s)
	}
}

func TestMultiPartFlightInfoAndParallelEndpoints(t *testing.T) {
	ctx := adminContext(t)
	c := NewClient(t)
	mem := memory.DefaultAllocator
	recs := mixedBatches(t, mem, 3, 5, 2500) // ~1 MB of Arrow data: many 64 KiB parts
	defer release(recs)
	pr := mustPut(t, ctx, c, Namespace, "go-parts", mixedSchema, recs, "")
	parts := len(node.Manifest(t, Namespace, "go-parts", pr.Version).Parts)
	if parts < 4 {
		t.Fatalf("the version was stored as %d parts; --part-size 64KiB should give several", parts)
	}

	info := flightInfo(t, ctx, c, Namespace, "go-parts")
	schema, err := flight.DeserializeSchema(info.Schema, mem)
	if err != nil {
		t.Fatalf("decoding FlightInfo.schema: %v", err)
	}
	if !schema.Equal(mixedSchema) {
		t.Fatalf("FlightInfo schema %s", schema)
	}
	if info.TotalRecords != rowsOf(recs) || info.TotalBytes <= 0 {
		t.Fatalf("FlightInfo total_records %d total_bytes %d, want %d rows", info.TotalRecords, info.TotalBytes, rowsOf(recs))
	}
	if got := info.FlightDescriptor.GetPath(); len(got) != 2 || got[0] != Namespace || got[1] != "go-parts" {
		t.Fatalf("FlightInfo descriptor path %v", got)
	}
	if len(info.Endpoint) != parts {
		t.Fatalf("%d endpoints for a version of %d parts", len(info.Endpoint), parts)
	}
	var md PutResult
	if err := json.Unmarshal(info.AppMetadata, &md); err != nil || md.Ticket != pr.Ticket {
		t.Fatalf("FlightInfo app_metadata %q (%v)", info.AppMetadata, err)
	}

	// Fetch every endpoint in parallel, each on the connection its location names.
	tables := make([]arrow.Table, len(info.Endpoint))
	g, gctx := errgroup.WithContext(ctx)
	for i, ep := range info.Endpoint {
		want := fmt.Sprintf("%s#%d", pr.Ticket, i)
		if string(ep.Ticket.Ticket) != want {
			t.Fatalf("endpoint %d ticket %q, want %q", i, ep.Ticket.Ticket, want)
		}
		locs := ep.Location
		if len(locs) == 0 || locs[len(locs)-1].Uri != reuseConnection {
			t.Fatalf("endpoint %d locations %v: want %s last", i, locs, reuseConnection)
		}
		g.Go(func() error {
			tbl, err := get(gctx, c, ep.Ticket.Ticket)
			if err != nil {
				return fmt.Errorf("endpoint %d: %w", i, err)
			}
			tables[i] = tbl
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	assertTableEqual(t, mixedSchema, recs, concatTables(t, mixedSchema, tables))

	// The standard Flight calls on the same version: PollFlightInfo answers a completed
	// PollInfo, CancelFlightInfo NOT_CANCELLABLE, RenewFlightEndpoint an endpoint.
	poll, err := c.PollFlightInfo(ctx, pathDescriptor(Namespace, "go-parts"))
	if err != nil {
		t.Fatalf("PollFlightInfo: %v", err)
	}
	if poll.GetFlightDescriptor() != nil || poll.GetProgress() != 1.0 || poll.GetInfo().GetTotalRecords() != info.TotalRecords ||
		len(poll.GetInfo().GetEndpoint()) != parts {
		t.Fatalf("PollInfo: descriptor %v progress %v info %v", poll.GetFlightDescriptor(), poll.GetProgress(), poll.GetInfo())
	}
	cancel, err := c.CancelFlightInfo(ctx, &flight.CancelFlightInfoRequest{Info: info})
	if err != nil {
		t.Fatalf("CancelFlightInfo: %v", err)
	}
	if cancel.GetStatus() != flight.CancelStatusNotCancellable {
		t.Fatalf("CancelFlightInfo status %v", cancel.GetStatus())
	}
	later := time.Now().Add(72 * time.Hour).Truncate(time.Second)
	ep := info.Endpoint[0]
	ep.ExpirationTime = timestamppb.New(later)
	renewed, err := c.RenewFlightEndpoint(ctx, &flight.RenewFlightEndpointRequest{Endpoint: ep})
	if err != nil {
		t.Fatalf("RenewFlightEndpoint: %v", err)
	}
	if !renewed.GetExpirationTime().AsTime().Equal(later) || string(renewed.GetTicket().GetTicket()) != string(ep.Ticket.Ticket) {
		t.Fatalf("RenewFlightEndpoint answered %v, want expiration %s", renewed, later)
	}
	if got := flightInfo(t, ctx, c, Namespace, "go-parts").Endpoint[0].GetExpirationTime().AsTime(); !got.Equal(later) {
		t.Fatalf("after RenewFlightEndpoint, FlightInfo expiration %s, want %s", got, later)
	}
}

// concatTables joins the endpoint tables in endpoint order.
func concatTables(t *testing.T, schema *arrow.Schema, tables []arrow.Table) arrow.Table {
	t.Helper()
	var recs []arrow.RecordBatch
	for i, tbl := range tables {
		if !tbl.Schema().Equal(schema) {
			t.Fatalf("endpoint %d schema %s", i, tbl.Schema())
		}
		tr := array.NewTableReader(tbl, -1)
		for tr.Next() {
			r := tr.RecordBatch()
			r.Retain()
			recs = append(recs, r)
		}
		tr.Release()
		tbl.Release()
	}
	out := array.NewTableFromRecords(schema, recs)
	release(recs)
	t.Cleanup(out.Release)
	return out
}

func listFlights(ctx context.Context, c flight.Client, criteria string) ([]*flight.FlightInfo, error) {
	stream, err := c.ListFlights(ctx, &flight.Criteria{Expression: []byte(criteria)})
	if err != nil {
		return nil, err
	}
	var out []*flight.FlightInfo
	for {
		info, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
}

func paths(infos []*flight.FlightInfo) []string {
	var out []string
	for _, i := range infos {
		out = append(out, strings.Join(i.GetFlightDescriptor().GetPath(), "/"))
	}
	sort.Strings(out)
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestListFlights(t *testing.T) {
	ctx := adminContext(t)
	c := NewClient(t)
	mem := memory.DefaultAllocator
	recs := wideBatches(mem, 2, 100)
	defer release(recs)
	mustPut(t, ctx, c, Namespace, "go-listed", wideSchema, recs, "")
	mustPut(t, ctx, c, OtherNs, "go-listed", wideSchema, recs, "")

	inNs, err := listFlights(ctx, c, Namespace)
	if err != nil {
		t.Fatalf("ListFlights(%q): %v", Namespace, err)
	}
	got := paths(inNs)
	if !contains(got, "analytics/go-listed") {
		t.Fatalf("ListFlights(analytics) = %v: misses analytics/go-listed", got)
	}
	for _, p := range got {
		if !strings.HasPrefix(p, Namespace+"/") {
			t.Fatalf("ListFlights(analytics) lists %s", p)
		}
	}
	for _, info := range inNs {
		if strings.Join(info.FlightDescriptor.Path, "/") == "analytics/go-listed" {
			if info.TotalRecords != 200 {
				t.Fatalf("listed total_records %d", info.TotalRecords)
			}
			s, err := flight.DeserializeSchema(info.Schema, mem)
			if err != nil || !s.Equal(wideSchema) {
				t.Fatalf("listed schema %v (%v)", s, err)
			}
		}
	}

	all, err := listFlights(ctx, c, "")
	if err != nil {
		t.Fatalf("ListFlights(empty): %v", err)
	}
	if got := paths(all); !contains(got, "analytics/go-listed") || !contains(got, "ops/go-listed") {
		t.Fatalf("ListFlights(empty) with the * token = %v", got)
	}

	// The namespace token sees only its namespace, also with empty criteria.
	nsCtx := WithToken(context.Background(), NsToken)
	nsCtx, cancel := context.WithTimeout(nsCtx, time.Minute)
	defer cancel()
	mine, err := listFlights(nsCtx, c, "")
	if err != nil {
		t.Fatalf("ListFlights(empty) with the namespace token: %v", err)
	}
	for _, p := range paths(mine) {
		if !strings.HasPrefix(p, Namespace+"/") {
			t.Fatalf("the namespace token lists %s", p)
		}
	}
	if !contains(paths(mine), "analytics/go-listed") {
		t.Fatalf("the namespace token misses its dataset: %v", paths(mine))
	}
}

type cachedTable struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Version   int64  `json:"version"`
	Bytes     int64  `json:"bytes"`
}

type stats struct {
	StorageURL string        `json:"storageUrl"`
	Hits       *int64        `json:"hits"`
	Misses     *int64        `json:"misses"`
	Evictions  *int64        `json:"evictions"`
	Tables     []cachedTable `json:"tables"`
}

func getStats(t *testing.T, ctx context.Context, c flight.Client) stats {
	t.Helper()
	res, err := Action(ctx, c, "stats", nil)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	if len(res) != 1 {
		t.Fatalf("stats answered %d results", len(res))
	}
	var s stats
	if err := json.Unmarshal(res[0], &s); err != nil {
		t.Fatalf("stats JSON %q: %v", res[0], err)
	}
	return s
}

func cached(s stats, ns, name string, version int64) bool {
	for _, tb := range s.Tables {
		if tb.Namespace == ns && tb.Name == name && tb.Version == version {
			return true
		}
	}
	return false
}

func TestActions(t *testing.T) {
	ctx := adminContext(t)
	c := NewClient(t)
	mem := memory.DefaultAllocator
	recs := mixedBatches(t, mem, 4, 3, 1500)
	defer release(recs)
	v1 := mustPut(t, ctx, c, Namespace, "go-actions", mixedSchema, recs, "1h")
	recs2 := mixedBatches(t, mem, 5, 1, 10)
	defer release(recs2)
	v2 := mustPut(t, ctx, c, Namespace, "go-actions", mixedSchema, recs2, "1h")

	// ListActions names the JSON actions.
	as, err := c.ListActions(ctx, &flight.Empty{})
	if err != nil {
		t.Fatalf("ListActions: %v", err)
	}
	var names []string
	for {
		a, err := as.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("ListActions: %v", err)
		}
		names = append(names, a.Type)
	}
	for _, want := range []string{"stats", "evict", "delete", "renew", "RenewFlightEndpoint", "CancelFlightInfo"} {
		if !contains(names, want) {
			t.Fatalf("ListActions %v lacks %s", names, want)
		}
	}

	// stats: the * token sees the counters and the tables in memory.
	s := getStats(t, ctx, c)
	if s.Hits == nil || s.Misses == nil || s.Evictions == nil || !strings.HasPrefix(s.StorageURL, "file://") {
		t.Fatalf("stats for the * token: %+v", s)
	}
	if !cached(s, Namespace, "go-actions", 1) {
		t.Fatalf("stats does not list go-actions@1 in memory: %+v", s.Tables)
	}
	// A namespace token sees its tables but not the node-wide counters.
	nsCtx := WithToken(context.Background(), NsToken)
	ns := getStats(t, nsCtx, c)
	if ns.Hits != nil || !cached(ns, Namespace, "go-actions", 1) {
		t.Fatalf("stats for the namespace token: %+v", ns)
	}
	for _, tb := range ns.Tables {
		if tb.Namespace != Namespace {
			t.Fatalf("stats shows the namespace token %s/%s", tb.Namespace, tb.Name)
		}
	}

	// evict, then DoGet reads the version back from storage.
	res, err := Action(ctx, c, "evict", map[string]any{"namespace": Namespace, "name": "go-actions", "version": 1})
	if err != nil {
		t.Fatalf("evict: %v", err)
	}
	var ev struct {
		Evicted int `json:"evicted"`
	}
	if err := json.Unmarshal(res[0], &ev); err != nil || ev.Evicted != 1 {
		t.Fatalf("evict answered %s (%v)", res[0], err)
	}
	s = getStats(t, ctx, c)
	if cached(s, Namespace, "go-actions", 1) {
		t.Fatalf("go-actions@1 still in memory after evict: %+v", s.Tables)
	}
	missesBefore := *s.Misses
	assertTableEqual(t, mixedSchema, recs, mustGet(t, ctx, c, v1.Ticket))
	s = getStats(t, ctx, c)
	if *s.Misses <= missesBefore || !cached(s, Namespace, "go-actions", 1) {
		t.Fatalf("the cold read counted no miss or cached nothing: misses %d -> %d, tables %+v",
			missesBefore, *s.Misses, s.Tables)
	}
	// Evicting the whole dataset and reading the newest version cold, by parts.
	if _, err := Action(ctx, c, "evict", map[string]any{"namespace": Namespace, "name": "go-actions"}); err != nil {
		t.Fatalf("evict dataset: %v", err)
	}
	info := flightInfo(t, ctx, c, Namespace, "go-actions")
	if info.TotalRecords != 10 {
		t.Fatalf("newest version has %d records", info.TotalRecords)
	}
	assertTableEqual(t, mixedSchema, recs2, mustGet(t, ctx, c, v2.Ticket))

	// renew extends the lease of version 1.
	oldExp, _ := time.Parse(time.RFC3339Nano, *v1.ExpiresAt)
	res, err = Action(ctx, c, "renew", map[string]any{"ticket": v1.Ticket, "ttl": "48h"})
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	var renewed PutResult
	if err := json.Unmarshal(res[0], &renewed); err != nil || renewed.ExpiresAt == nil {
		t.Fatalf("renew answered %s (%v)", res[0], err)
	}
	newExp, err := time.Parse(time.RFC3339Nano, *renewed.ExpiresAt)
	if err != nil || renewed.Ticket != v1.Ticket || renewed.Version != 1 || !newExp.After(oldExp.Add(40*time.Hour)) {
		t.Fatalf("renew: %+v (was %s)", renewed, oldExp)
	}
	// An invalid TTL is INVALID_ARGUMENT, an unknown version NOT_FOUND.
	_, err = Action(ctx, c, "renew", map[string]any{"ticket": v1.Ticket, "ttl": "soon"})
	expectCode(t, "renew with a bad ttl", err, codes.InvalidArgument)
	_, err = Action(ctx, c, "renew", map[string]any{"ticket": "ads1:analytics/go-actions@9", "ttl": "1h"})
	expectCode(t, "renew of an unknown version", err, codes.NotFound)

	// delete version 1: its ticket is NOT_FOUND from then on, version 2 stays.
	res, err = Action(ctx, c, "delete", map[string]any{"namespace": Namespace, "name": "go-actions", "version": 1})
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	var del struct {
		Deleted []int64 `json:"deleted"`
	}
	if err := json.Unmarshal(res[0], &del); err != nil || len(del.Deleted) != 1 || del.Deleted[0] != 1 {
		t.Fatalf("delete answered %s (%v)", res[0], err)
	}
	_, err = get(ctx, c, []byte(v1.Ticket))
	expectCode(t, "DoGet of a deleted version", err, codes.NotFound)
	_, err = Action(ctx, c, "renew", map[string]any{"ticket": v1.Ticket, "ttl": "1h"})
	expectCode(t, "renew of a deleted version", err, codes.NotFound)
	assertTableEqual(t, mixedSchema, recs2, mustGet(t, ctx, c, v2.Ticket))
	// Deleting it again finds nothing.
	_, err = Action(ctx, c, "delete", map[string]any{"namespace": Namespace, "name": "go-actions", "version": 1})
	expectCode(t, "second delete", err, codes.NotFound)
	// A new upload never reuses the deleted number.
	v3 := mustPut(t, ctx, c, Namespace, "go-actions", mixedSchema, recs2, "")
	if v3.Version != 3 {
		t.Fatalf("upload after a delete got version %d, want 3", v3.Version)
	}
}

func TestErrorCodes(t *testing.T) {
	ctx := adminContext(t)
	c := NewClient(t)
	mem := memory.DefaultAllocator
	recs := wideBatches(mem, 1, 10)
	defer release(recs)
	pr := mustPut(t, ctx, c, Namespace, "go-errors", wideSchema, recs, "")
	other := mustPut(t, ctx, c, OtherNs, "go-errors", wideSchema, recs, "")

	// Malformed tickets and descriptors are INVALID_ARGUMENT.
	for _, bad := range []string{"not-a-ticket", "ads1:analytics/go-errors", "ads1:Analytics/go-errors@1",
		"ads1:analytics/go-errors@x", "ads1:analytics/go-errors@1#zz", ""} {
		_, err := get(ctx, c, []byte(bad))
		expectCode(t, fmt.Sprintf("DoGet %q", bad), err, codes.InvalidArgument)
	}
	_, err := c.GetFlightInfo(ctx, pathDescriptor("Not_A_Label", "x"))
	expectCode(t, "GetFlightInfo of an invalid namespace", err, codes.InvalidArgument)
	_, err = put(ctx, c, Namespace, "Bad Name", wideSchema, recs, "")
	expectCode(t, "DoPut to an invalid name", err, codes.InvalidArgument)
	_, err = put(ctx, c, Namespace, "go-errors", wideSchema, recs, "forever")
	expectCode(t, "DoPut with an invalid x-flight-ttl", err, codes.InvalidArgument)
	_, err = Action(ctx, c, "evict", []byte("{not json"))
	expectCode(t, "evict with a body that is not JSON", err, codes.InvalidArgument)

	// Unknown versions, parts and datasets are NOT_FOUND.
	_, err = get(ctx, c, []byte("ads1:analytics/go-errors@99"))
	expectCode(t, "DoGet of an unknown version", err, codes.NotFound)
	_, err = get(ctx, c, []byte("ads1:analytics/no-such-dataset@1"))
	expectCode(t, "DoGet of an unknown dataset", err, codes.NotFound)
	_, err = c.GetFlightInfo(ctx, pathDescriptor(Namespace, "no-such-dataset"))
	expectCode(t, "GetFlightInfo of an unknown dataset", err, codes.NotFound)

	// No token (or a wrong one) is UNAUTHENTICATED, on every kind of call.
	for _, anon := range []context.Context{context.Background(), WithToken(context.Background(), "wrong")} {
		_, err = get(anon, c, []byte(pr.Ticket))
		expectCode(t, "DoGet without a valid token", err, codes.Unauthenticated)
		_, err = c.GetFlightInfo(anon, pathDescriptor(Namespace, "go-errors"))
		expectCode(t, "GetFlightInfo without a valid token", err, codes.Unauthenticated)
		_, err = listFlights(anon, c, "")
		expectCode(t, "ListFlights without a valid token", err, codes.Unauthenticated)
		_, err = put(anon, c, Namespace, "go-errors", wideSchema, recs, "")
		expectCode(t, "DoPut without a valid token", err, codes.Unauthenticated)
		_, err = Action(anon, c, "stats", nil)
		expectCode(t, "stats without a valid token", err, codes.Unauthenticated)
	}

	// The namespace token on another namespace is PERMISSION_DENIED; on its own it works.
	nsCtx := WithToken(context.Background(), NsToken)
	_, err = get(nsCtx, c, []byte(other.Ticket))
	expectCode(t, "DoGet of another namespace", err, codes.PermissionDenied)
	_, err = c.GetFlightInfo(nsCtx, pathDescriptor(OtherNs, "go-errors"))
	expectCode(t, "GetFlightInfo of another namespace", err, codes.PermissionDenied)
	_, err = listFlights(nsCtx, c, OtherNs)
	expectCode(t, "ListFlights of another namespace", err, codes.PermissionDenied)
	_, err = put(nsCtx, c, OtherNs, "go-errors", wideSchema, recs, "")
	expectCode(t, "DoPut to another namespace", err, codes.PermissionDenied)
	_, err = Action(nsCtx, c, "evict", map[string]any{"namespace": OtherNs, "name": "go-errors"})
	expectCode(t, "evict in another namespace", err, codes.PermissionDenied)
	_, err = Action(nsCtx, c, "delete", map[string]any{"namespace": OtherNs, "name": "go-errors"})
	expectCode(t, "delete in another namespace", err, codes.PermissionDenied)
	_, err = Action(nsCtx, c, "renew", map[string]any{"ticket": other.Ticket, "ttl": "1h"})
	expectCode(t, "renew in another namespace", err, codes.PermissionDenied)
	assertTableEqual(t, wideSchema, recs, mustGet(t, nsCtx, c, pr.Ticket))
	// Nothing was changed by the refused calls.
	assertTableEqual(t, wideSchema, recs, mustGet(t, ctx, c, other.Ticket))
	if v := flightInfo(t, ctx, c, OtherNs, "go-errors").TotalRecords; v != 10 {
		t.Fatalf("ops/go-errors has %d records", v)
	}
}

// TestHandshake authenticates the way arrow-go offers: Handshake with basic credentials whose
// password is the token; the returned context carries the bearer header. arrow-go encodes the
// credentials as base64 without padding (RFC 4648 "raw"), so the tokens are chosen to need
// padding ("analytics-token") and not ("admin-token").
func TestHandshake(t *testing.T) {
	c := NewClient(t)
	mem := memory.DefaultAllocator
	recs := wideBatches(mem, 2, 50)
	defer release(recs)
	for _, token := range []string{AdminToken, NsToken} {
		t.Run(token, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			authed, err := c.AuthenticateBasicToken(ctx, "", token)
			if err != nil {
				t.Fatalf("Handshake via AuthenticateBasicToken(\"\", %q) failed: %v (arrow-go sends "+
					"\"Basic \" + base64.RawStdEncoding(\":%s\"), i.e. without '=' padding, which "+
					"the node must accept)", token, err, token)
			}
			md, _ := metadata.FromOutgoingContext(authed)
			if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+token {
				t.Fatalf("Handshake answered authorization %v", got)
			}
			pr, err := put(authed, c, Namespace, "go-handshake", wideSchema, recs, "")
			if err != nil {
				t.Fatalf("DoPut after Handshake: %v", err)
			}
			got, err := get(authed, c, []byte(pr.Ticket))
			if err != nil {
				t.Fatalf("DoGet after Handshake: %v", err)
			}
			defer got.Release()
			assertTableEqual(t, wideSchema, recs, got)
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := c.AuthenticateBasicToken(ctx, "", "wrong")
	expectCode(t, "Handshake with a wrong token", err, codes.Unauthenticated)
}

// TestCancelMidStream cancels a DoGet of a large table after its first batch, hot and cold;
// the node goes on serving, that table included.
func TestCancelMidStream(t *testing.T) {
	ctx := adminContext(t)
	c := NewClient(t)
	mem := memory.DefaultAllocator
	recs := wideBatches(mem, 10, 100_000) // 24 MB of Arrow data
	defer release(recs)
	pr := mustPut(t, ctx, c, Namespace, "go-big", wideSchema, recs, "")
	total := rowsOf(recs)

	for _, cold := range []bool{false, true} {
		if cold {
			if _, err := Action(ctx, c, "evict", map[string]any{"namespace": Namespace, "name": "go-big"}); err != nil {
				t.Fatalf("evict: %v", err)
			}
		}
		cctx, cancel := context.WithCancel(ctx)
		stream, err := c.DoGet(cctx, &flight.Ticket{Ticket: []byte(pr.Ticket)})
		if err != nil {
			t.Fatalf("DoGet: %v", err)
		}
		rdr, err := flight.NewRecordReader(stream)
		if err != nil {
			t.Fatalf("DoGet reader: %v", err)
		}
		if !rdr.Next() {
			t.Fatalf("no first batch: %v", rdr.Err())
		}
		read := rdr.RecordBatch().NumRows()
		cancel()
		for rdr.Next() {
			read += rdr.RecordBatch().NumRows()
		}
		err = rdr.Err()
		rdr.Release()
		expectCode(t, fmt.Sprintf("reading on after the cancel (cold=%v)", cold), err, codes.Canceled)
		if read >= total {
			t.Fatalf("the whole table (%d rows) arrived before the cancel took effect", read)
		}

		// The node keeps serving: a small call, then the same table in full.
		if _, err := Action(ctx, c, "stats", nil); err != nil {
			t.Fatalf("stats after a cancelled DoGet: %v", err)
		}
		assertTableEqual(t, wideSchema, recs, mustGet(t, ctx, c, pr.Ticket))
	}
	if !node.Alive() {
		t.Fatal("flight-node exited")
	}
}
