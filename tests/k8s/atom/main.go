// Command atom is a pipeline step as it runs in a cluster: a static Arrow Flight client that
// uploads a table to a pool through its Service and prints the ticket, or fetches a ticket and
// checks the table. The end-to-end tests run it as Kubernetes Jobs.
//
//	atom put <uri> <namespace> <name> <rows>   prints the PutResult JSON
//	atom get <uri> <ticket> <rows>             checks the table: rows and the sum of x
//
// The table has one int64 column x = 0, 1, ..., rows-1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/flight"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "atom:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 1 {
		return errors.New("usage: atom put <uri> <ns> <name> <rows> | atom get <uri> <ticket> <rows>")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	switch {
	case args[0] == "put" && len(args) == 5:
		rows, err := strconv.Atoi(args[4])
		if err != nil {
			return fmt.Errorf("rows %q: %w", args[4], err)
		}
		c, err := connect(args[1])
		if err != nil {
			return err
		}
		defer c.Close()
		answer, err := put(ctx, c, args[2], args[3], rows)
		if err != nil {
			return err
		}
		fmt.Println(string(answer))
		return nil
	case args[0] == "get" && len(args) == 4:
		rows, err := strconv.Atoi(args[3])
		if err != nil {
			return fmt.Errorf("rows %q: %w", args[3], err)
		}
		c, err := connect(args[1])
		if err != nil {
			return err
		}
		defer c.Close()
		return get(ctx, c, args[2], rows)
	}
	return fmt.Errorf("unknown command %q", strings.Join(args, " "))
}

func connect(uri string) (flight.Client, error) {
	addr := strings.TrimPrefix(uri, "grpc://")
	return flight.NewClientWithMiddleware(addr, nil, nil,
		grpc.WithTransportCredentials(insecure.NewCredentials()))
}

var schema = arrow.NewSchema([]arrow.Field{{Name: "x", Type: arrow.PrimitiveTypes.Int64}}, nil)

func put(ctx context.Context, c flight.Client, ns, name string, rows int) ([]byte, error) {
	b := array.NewInt64Builder(memory.DefaultAllocator)
	defer b.Release()
	for i := 0; i < rows; i++ {
		b.Append(int64(i))
	}
	col := b.NewArray()
	defer col.Release()
	rec := array.NewRecordBatch(schema, []arrow.Array{col}, int64(rows))
	defer rec.Release()

	stream, err := c.DoPut(ctx)
	if err != nil {
		return nil, fmt.Errorf("DoPut: %w", err)
	}
	w := flight.NewRecordWriter(stream, ipc.WithSchema(schema))
	w.SetFlightDescriptor(&flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{ns, name}})
	if err := w.Write(rec); err != nil {
		return nil, fmt.Errorf("DoPut write: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("DoPut close: %w", err)
	}
	if err := stream.CloseSend(); err != nil {
		return nil, fmt.Errorf("DoPut close send: %w", err)
	}
	var answer []byte
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("DoPut answer: %w", err)
		}
		answer = r.AppMetadata
	}
	if !json.Valid(answer) {
		return nil, fmt.Errorf("DoPut answered %q, not the PutResult JSON", answer)
	}
	return answer, nil
}

func get(ctx context.Context, c flight.Client, ticket string, rows int) error {
	stream, err := c.DoGet(ctx, &flight.Ticket{Ticket: []byte(ticket)})
	if err != nil {
		return fmt.Errorf("DoGet: %w", err)
	}
	rdr, err := flight.NewRecordReader(stream)
	if err != nil {
		return fmt.Errorf("DoGet: %w", err)
	}
	defer rdr.Release()
	var n, sum int64
	for rdr.Next() {
		x, ok := rdr.RecordBatch().Column(0).(*array.Int64)
		if !ok {
			return fmt.Errorf("column x is %s, want int64", rdr.RecordBatch().Column(0).DataType())
		}
		for _, v := range x.Int64Values() {
			sum += v
		}
		n += int64(x.Len())
	}
	if err := rdr.Err(); err != nil {
		return fmt.Errorf("DoGet read: %w", err)
	}
	want := int64(rows) * int64(rows-1) / 2
	if n != int64(rows) || sum != want {
		return fmt.Errorf("read %d rows summing to %d, want %d rows summing to %d", n, sum, rows, want)
	}
	fmt.Printf("ok: %s has %d rows, sum %d\n", ticket, n, sum)
	return nil
}
