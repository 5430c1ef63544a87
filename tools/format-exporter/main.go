// format-exporter: a real exporter for scrapez's scrape-format conformance test (test/integration/conformance.test.ts).
// Its /metrics handlers are client_golang's promhttp, which negotiates the format (protobuf, OpenMetrics 1.0.0/0.0.1,
// text 0.0.4), the name escaping (the Accept header's escaping= parameter) and gzip by itself, exactly as the
// exporters users run. Its metrics never change after start-up (counters, a classic+native histogram with
// exemplars, a summary, created timestamps, UTF-8 names, an explicitly timestamped gauge), so two scrapes with the
// same request headers get the same bytes, wherever they come from.
//
// Every scrape is recorded: the request's URL and headers, and the status, headers and body bytes of the response
// exactly as they went onto the connection (after gzip). GET /-/records returns them as JSON (bodies in base64),
// filtered by ?case=&via= (the scrape's own query parameters) and ?last=N.
//
// Paths (each offers a different set of formats, as exporters configure promhttp):
//
//	/metrics            protobuf, OpenMetrics 1.0.0 and 0.0.1, text 0.0.4; gzip when asked (EnableOpenMetrics)
//	/metrics/om         OpenMetrics 1.0.0 and text 0.0.4 only (no protobuf)
//	/metrics/text       text 0.0.4 only
//	/metrics/identity   as /metrics, never compressed (DisableCompression)
//
// Flags: --listen 127.0.0.1:0 (plain HTTP), --tls-listen 127.0.0.1:0 with --tls-cert/--tls-key (the same handlers
// over TLS). Each listener's address is logged as "listening <http|https> <addr>" on stderr once it accepts.
package main

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"
)

// record is one scrape as the exporter saw and answered it.
type record struct {
	Seq         int64               `json:"seq"`
	TLS         bool                `json:"tls"`
	URL         string              `json:"url"`
	Case        string              `json:"case"`
	Via         string              `json:"via"`
	ReqHeaders  map[string][]string `json:"requestHeaders"`
	Status      int                 `json:"status"`
	RespHeaders map[string][]string `json:"responseHeaders"`
	Body        string              `json:"body"` // base64 of the bytes written
}

const maxRecords = 4000

var (
	mu      sync.Mutex
	records []record
	seq     int64
)

// recorder tees what the handler writes.
type recorder struct {
	http.ResponseWriter
	status int
	buf    bytes.Buffer
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.buf.Write(p)
	return r.ResponseWriter.Write(p)
}

func recorded(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rec := &recorder{ResponseWriter: w}
		h.ServeHTTP(rec, req)
		q := req.URL.Query()
		mu.Lock()
		seq++
		records = append(records, record{
			Seq: seq, TLS: req.TLS != nil, URL: req.URL.RequestURI(), Case: q.Get("case"), Via: q.Get("via"),
			ReqHeaders: req.Header.Clone(), Status: rec.status, RespHeaders: w.Header().Clone(),
			Body: base64.StdEncoding.EncodeToString(rec.buf.Bytes()),
		})
		if len(records) > maxRecords {
			records = records[len(records)-maxRecords:]
		}
		mu.Unlock()
	})
}

func serveRecords(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	last, _ := strconv.Atoi(q.Get("last"))
	mu.Lock()
	out := []record{}
	for i := len(records) - 1; i >= 0 && (last <= 0 || len(out) < last); i-- {
		r := records[i]
		if (q.Get("case") == "" || r.Case == q.Get("case")) && (q.Get("via") == "" || r.Via == q.Get("via")) {
			out = append(out, r)
		}
	}
	mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// timestamped is a gauge carrying its own timestamp (the exporter's start, to the millisecond), for honor_timestamps.
type timestamped struct {
	desc *prometheus.Desc
	ts   time.Time
}

func (t timestamped) Describe(ch chan<- *prometheus.Desc) { ch <- t.desc }
func (t timestamped) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewMetricWithTimestamp(t.ts, prometheus.MustNewConstMetric(t.desc, prometheus.GaugeValue, 42))
}

func registry(start time.Time) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fe_requests_total", Help: "Requests served, by code (static).",
	}, []string{"code"})
	requests.WithLabelValues("200").(prometheus.ExemplarAdder).AddWithExemplar(7, prometheus.Labels{"trace_id": "4bf92f3577b34da6"})
	requests.WithLabelValues("500").Add(2)
	latency := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "fe_request_duration_seconds", Help: "Request latency: classic buckets and a native histogram.",
		Buckets:                         []float64{0.01, 0.05, 0.1, 0.5, 1},
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxExemplars:     4,
		NativeHistogramExemplarTTL:      time.Hour,
		NativeHistogramMaxBucketNumber:  160,
		NativeHistogramMinResetDuration: time.Hour,
	})
	for i, v := range []float64{0.003, 0.02, 0.02, 0.07, 0.12, 0.3, 0.8, 2.5} {
		latency.(prometheus.ExemplarObserver).ObserveWithExemplar(v, prometheus.Labels{"trace_id": fmt.Sprintf("t%04d", i)})
	}
	sizes := prometheus.NewSummary(prometheus.SummaryOpts{
		Name: "fe_response_size_bytes", Help: "Response sizes (static).",
		Objectives: map[float64]float64{0.5: 0.05, 0.9: 0.01},
	})
	for _, v := range []float64{100, 200, 300, 4000} {
		sizes.Observe(v)
	}
	temp := prometheus.NewGauge(prometheus.GaugeOpts{Name: "fe_temperature_celsius", Help: "A gauge with \\ and \n in its help."})
	temp.Set(-3.25)
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fe_build_info", Help: "Label values that need escaping."},
		[]string{"version", "note"})
	info.WithLabelValues("1.0.0", "quote \" backslash \\ newline \n unicode é✓").Set(1)
	utf8 := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fe.utf8.requests_total", Help: "A UTF-8 metric name with a dotted label.",
	}, []string{"http.method"})
	utf8.WithLabelValues("GET").Add(3)
	reg.MustRegister(requests, latency, sizes, temp, info, utf8, timestamped{
		desc: prometheus.NewDesc("fe_timestamped_value", "A gauge with an explicit timestamp.", nil, nil),
		ts:   start,
	})
	return reg
}

// frozen gathers once: every scrape serves the same families (created timestamps, exemplar timestamps and all).
type frozen []*dto.MetricFamily

func (f frozen) Gather() ([]*dto.MetricFamily, error) {
	out := make([]*dto.MetricFamily, len(f))
	for i, mf := range f {
		out[i] = proto.Clone(mf).(*dto.MetricFamily)
	}
	return out, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "plain HTTP listen address")
	tlsListen := flag.String("tls-listen", "", "TLS listen address (needs --tls-cert and --tls-key)")
	cert := flag.String("tls-cert", "", "TLS certificate (PEM)")
	key := flag.String("tls-key", "", "TLS key (PEM)")
	flag.Parse()
	log.SetFlags(0)

	start := time.Now().Add(-time.Second).Truncate(time.Millisecond)
	mfs, err := registry(start).Gather()
	if err != nil {
		log.Fatalf("gathering the static metrics: %v", err)
	}
	g := frozen(mfs)
	handler := func(opts promhttp.HandlerOpts) http.Handler {
		return recorded(promhttp.HandlerFor(g, opts))
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", handler(promhttp.HandlerOpts{EnableOpenMetrics: true, EnableOpenMetricsTextCreatedSamples: true}))
	mux.Handle("/metrics/om", handler(promhttp.HandlerOpts{
		EnableOpenMetricsTextCreatedSamples: true,
		AcceptedFormats:                     []expfmt.Format{expfmt.FmtOpenMetrics_1_0_0, expfmt.FmtText},
	}))
	mux.Handle("/metrics/text", handler(promhttp.HandlerOpts{AcceptedFormats: []expfmt.Format{expfmt.FmtText}}))
	mux.Handle("/metrics/identity", handler(promhttp.HandlerOpts{
		EnableOpenMetrics: true, EnableOpenMetricsTextCreatedSamples: true, DisableCompression: true,
	}))
	mux.HandleFunc("/-/records", serveRecords)
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ready\n")) })

	serve := func(kind, addr string, cfg *tls.Config) {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			log.Fatalf("%s listener on %s: %v", kind, addr, err)
		}
		if cfg != nil {
			l = tls.NewListener(l, cfg)
		}
		log.Printf("listening %s %s", kind, l.Addr())
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		log.Fatal(srv.Serve(l))
	}
	if *tlsListen != "" {
		if *cert == "" || *key == "" {
			fmt.Fprintln(os.Stderr, "--tls-listen needs --tls-cert and --tls-key")
			os.Exit(2)
		}
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			log.Fatalf("loading --tls-cert/--tls-key: %v", err)
		}
		go serve("https", *tlsListen, &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})
	}
	serve("http", *listen, nil)
}
