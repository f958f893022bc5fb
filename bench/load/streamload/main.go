// streamload: a closed-loop load generator for OpenAI-style streaming chat completions.
//
// Each of -c workers opens a stream, reads it to the end, and opens the next one, until
// -duration. Streams that start after -warmup are measured: time to first token (first
// `data:` event), gaps between consecutive events, and completed streams per second
// (streams that ended inside the measured window). A stream is an error when its status is
// not 200, it carries an error event, it ends without `data: [DONE]`, or (with
// -want-usage) it has no usage chunk. With -api anthropic it speaks the Messages API instead:
// the key goes in x-api-key, the first token is the first content_block_delta, the end is
// message_stop, and the usage is message_delta's. Standard library only; prints one JSON
// object.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"runtime"
	"sort"
	"sync"
	"time"
)

type streamResult struct {
	started  time.Duration // since the run began
	ended    time.Duration
	ttft     time.Duration
	gaps     []time.Duration
	chunks   int
	err      string
	canceled bool
}

type dist struct {
	N    int     `json:"n"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

type report struct {
	URL             string         `json:"url"`
	Concurrency     int            `json:"concurrency"`
	DurationS       float64        `json:"duration_s"`
	WarmupS         float64        `json:"warmup_s"`
	WindowS         float64        `json:"window_s"`
	Started         int            `json:"streams_started"`
	Completed       int            `json:"streams_completed"`
	CompletedWindow int            `json:"streams_completed_in_window"`
	CompletedPerS   float64        `json:"completed_per_s"`
	ChunksPerS      float64        `json:"chunks_per_s"`
	Errors          int            `json:"errors"`
	ErrorSamples    map[string]int `json:"error_samples"`
	CanceledAtEnd   int            `json:"canceled_at_end"`
	TTFTms          dist           `json:"ttft_ms"`
	GapMs           dist           `json:"inter_chunk_ms"`
	GoMaxProcs      int            `json:"gomaxprocs"`
}

func summarize(values []time.Duration) dist {
	if len(values) == 0 {
		return dist{}
	}
	sort.Slice(values, func(i, j int) bool { return values[i] < values[j] })
	ms := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }
	pick := func(q float64) float64 {
		idx := int(math.Ceil(q*float64(len(values)))) - 1
		if idx < 0 {
			idx = 0
		}
		return ms(values[idx])
	}
	var sum float64
	for _, v := range values {
		sum += ms(v)
	}
	return dist{
		N:    len(values),
		Mean: sum / float64(len(values)),
		P50:  pick(0.50),
		P90:  pick(0.90),
		P99:  pick(0.99),
		P999: pick(0.999),
		Max:  ms(values[len(values)-1]),
	}
}

var (
	dataPrefix = []byte("data:")
	doneData   = []byte("[DONE]")
	errorData  = []byte(`{"error"`)
	usageMark  = []byte(`"usage":{`)
	// the Messages API (-api anthropic)
	deltaMark = []byte(`"type":"content_block_delta"`)
	stopMark  = []byte(`"type":"message_stop"`)
	aErrMark  = []byte(`"type":"error"`)
	aUsage    = []byte(`"type":"message_delta"`)
)

var anthropic bool

func oneStream(ctx context.Context, client *http.Client, url, key string, body []byte,
	wantUsage bool, begin time.Time) streamResult {
	res := streamResult{started: time.Since(begin)}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		res.err = "request: " + err.Error()
		return res
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	if key != "" && anthropic {
		req.Header.Set("x-api-key", key)
		req.Header.Set("anthropic-version", "2023-06-01")
	} else if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			res.canceled = true
		} else {
			res.err = "connect: " + err.Error()
		}
		res.ended = time.Since(begin)
		return res
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		res.err = fmt.Sprintf("status %d: %s", resp.StatusCode, bytes.TrimSpace(snippet))
		res.ended = time.Since(begin)
		return res
	}
	reader := bufio.NewReaderSize(resp.Body, 16384)
	var last time.Time
	done, usage := false, false
	for {
		line, err := reader.ReadSlice('\n')
		if len(line) > 0 && bytes.HasPrefix(line, dataPrefix) {
			now := time.Now()
			data := bytes.TrimSpace(line[len(dataPrefix):])
			if anthropic {
				if bytes.Contains(data, aErrMark) {
					res.err = "error event: " + string(data[:min(len(data), 160)])
					break
				}
				if bytes.Contains(data, aUsage) && bytes.Contains(data, usageMark) {
					usage = true
				}
				if bytes.Contains(data, stopMark) {
					done = true
					break
				}
			} else if bytes.Equal(data, doneData) {
				done = true
				break
			}
			if bytes.HasPrefix(data, errorData) {
				res.err = "error event: " + string(data[:min(len(data), 160)])
				break
			}
			if !anthropic && bytes.Contains(data, usageMark) {
				usage = true
			}
			// Messages API: only content_block_delta carries tokens (not message_start, ping)
			if !anthropic || bytes.Contains(data, deltaMark) {
				if res.chunks == 0 {
					res.ttft = now.Sub(t0)
				} else {
					res.gaps = append(res.gaps, now.Sub(last))
				}
				last = now
				res.chunks++
			}
		}
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			if ctx.Err() != nil {
				res.canceled = true
			} else if !errors.Is(err, io.EOF) {
				res.err = "read: " + err.Error()
			}
			break
		}
	}
	res.ended = time.Since(begin)
	if res.err == "" && !res.canceled {
		if !done {
			res.err = "stream ended without its last event ([DONE] / message_stop)"
		} else if wantUsage && !usage {
			res.err = "no usage chunk"
		}
	}
	return res
}

func main() {
	url := flag.String("url", "", "chat completions URL")
	key := flag.String("key", "", "bearer key (optional)")
	model := flag.String("model", "llama3:8b", "model name")
	concurrency := flag.Int("c", 100, "concurrent streams")
	duration := flag.Duration("duration", 20*time.Second, "run length")
	warmup := flag.Duration("warmup", 5*time.Second, "not measured at the start")
	ramp := flag.Duration("ramp", time.Second, "spread the workers' first requests over this")
	maxTokens := flag.Int("max-tokens", 0, "max_tokens to send (0: omit)")
	wantUsage := flag.Bool("want-usage", true, "send include_usage and require a usage chunk")
	api := flag.String("api", "openai", "openai (chat completions) or anthropic (messages)")
	flag.Parse()
	anthropic = *api == "anthropic"
	if *url == "" {
		fmt.Fprintln(os.Stderr, "streamload: -url is required")
		os.Exit(2)
	}

	request := map[string]any{
		"model":    *model,
		"stream":   true,
		"messages": []map[string]string{{"role": "user", "content": "Say something short."}},
	}
	if *wantUsage && !anthropic {
		request["stream_options"] = map[string]bool{"include_usage": true}
	}
	if *maxTokens > 0 {
		request["max_tokens"] = *maxTokens
	} else if anthropic {
		request["max_tokens"] = 256 // required by the Messages API
	}
	body, _ := json.Marshal(request)

	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        *concurrency * 2,
		MaxIdleConnsPerHost: *concurrency * 2,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	client := &http.Client{Transport: transport}

	begin := time.Now()
	ctx, cancel := context.WithDeadline(context.Background(), begin.Add(*duration))
	defer cancel()
	results := make(chan streamResult, 4096)
	var wg sync.WaitGroup
	for i := 0; i < *concurrency; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			delay := time.Duration(int64(*ramp) * int64(i) / int64(*concurrency))
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return
			}
			for ctx.Err() == nil {
				results <- oneStream(ctx, client, *url, *key, body, *wantUsage, begin)
			}
		}(i)
	}
	go func() { wg.Wait(); close(results) }()

	rep := report{
		URL: *url, Concurrency: *concurrency, DurationS: duration.Seconds(),
		WarmupS: warmup.Seconds(), WindowS: (*duration - *warmup).Seconds(),
		ErrorSamples: map[string]int{}, GoMaxProcs: runtime.GOMAXPROCS(0),
	}
	var ttfts, gaps []time.Duration
	chunksInWindow := 0
	for r := range results {
		rep.Started++
		if r.canceled {
			rep.CanceledAtEnd++
			continue
		}
		if r.err != "" {
			rep.Errors++
			if _, seen := rep.ErrorSamples[r.err]; seen || len(rep.ErrorSamples) < 20 {
				rep.ErrorSamples[r.err]++
			}
			continue
		}
		rep.Completed++
		if r.ended >= *warmup {
			rep.CompletedWindow++
			chunksInWindow += r.chunks
		}
		if r.started >= *warmup {
			ttfts = append(ttfts, r.ttft)
			gaps = append(gaps, r.gaps...)
		}
	}
	if rep.WindowS > 0 {
		rep.CompletedPerS = float64(rep.CompletedWindow) / rep.WindowS
		rep.ChunksPerS = float64(chunksInWindow) / rep.WindowS
	}
	rep.TTFTms = summarize(ttfts)
	rep.GapMs = summarize(gaps)
	out, _ := json.MarshalIndent(rep, "", "  ")
	fmt.Println(string(out))
}
