// Command netpolreport summarizes a run of the upstream NetworkPolicy e2e tests
// from the JUnit XML that e2e.test writes (--report-dir) and the list of the
// selected tests (e2e.test --list-tests, filtered), as Markdown.
//
//	netpolreport -junit _out/conformance/report/junit_01.xml -list tests.txt \
//	    -skip 'SCTP=reason' [-header header.md] [-focus REGEXP]
//
// Every test of the list appears once: passed, failed (with the first line of
// its failure), or skipped (with the reason of the first -skip pattern its name
// matches, else the JUnit message). A listed test that the JUnit XML lacks is
// reported as "not run". The counts line goes to stderr as well.
package main

import (
	"bufio"
	"encoding/xml"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

type testcase struct {
	Name    string `xml:"name,attr"`
	Status  string `xml:"status,attr"`
	Time    string `xml:"time,attr"`
	Skipped *struct {
		Message string `xml:"message,attr"`
	} `xml:"skipped"`
	Failure *struct {
		Message string `xml:"message,attr"`
		Text    string `xml:",chardata"`
	} `xml:"failure"`
	Error *struct {
		Message string `xml:"message,attr"`
		Text    string `xml:",chardata"`
	} `xml:"error"`
}

type suites struct {
	Suites []struct {
		Cases []testcase `xml:"testcase"`
	} `xml:"testsuite"`
	Cases []testcase `xml:"testcase"` // a bare <testsuite> root
}

type skipRule struct {
	re     *regexp.Regexp
	reason string
}

type skipList []skipRule

func (s *skipList) String() string { return "" }
func (s *skipList) Set(v string) error {
	pat, reason, ok := strings.Cut(v, "=")
	if !ok {
		return errors.New("want REGEXP=REASON")
	}
	re, err := regexp.Compile(pat)
	if err != nil {
		return err
	}
	*s = append(*s, skipRule{re, reason})
	return nil
}

// leafName drops ginkgo's leaf node prefix ("[It] ") so JUnit and list names compare.
func leafName(n string) string {
	n = strings.TrimSpace(n)
	if strings.HasPrefix(n, "[It] ") {
		n = n[len("[It] "):]
	}
	return n
}

func main() {
	junit := flag.String("junit", "", "JUnit XML written by e2e.test (empty: no run, everything is 'not run')")
	list := flag.String("list", "", "file with one selected test name per line (required)")
	header := flag.String("header", "", "Markdown to print before the results")
	var skips skipList
	flag.Var(&skips, "skip", "REGEXP=REASON: tests skipped on purpose and why (repeatable)")
	flag.Parse()
	if err := run(*junit, *list, *header, skips, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "netpolreport:", err)
		os.Exit(1)
	}
}

type result struct {
	name, state, detail, secs string
}

func run(junitPath, listPath, headerPath string, skips skipList, w io.Writer) error {
	if listPath == "" {
		return errors.New("-list is required")
	}
	names, err := readLines(listPath)
	if err != nil {
		return err
	}
	got := map[string]testcase{}
	if junitPath != "" {
		b, err := os.ReadFile(junitPath)
		if err != nil {
			return err
		}
		var s suites
		if err := xml.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("%s: %w", junitPath, err)
		}
		all := s.Cases
		for _, su := range s.Suites {
			all = append(all, su.Cases...)
		}
		for _, c := range all {
			got[leafName(c.Name)] = c
		}
	}
	var res []result
	count := map[string]int{}
	for _, n := range names {
		r := result{name: n}
		c, ok := got[n]
		reason := ""
		for _, s := range skips {
			if s.re.MatchString(n) {
				reason = s.reason
				break
			}
		}
		switch {
		case !ok && reason != "":
			r.state, r.detail = "skipped", reason
		case !ok:
			r.state = "not run"
		case c.Failure != nil || c.Error != nil || c.Status == "failed" || c.Status == "panicked" || c.Status == "timedout" || c.Status == "interrupted" || c.Status == "aborted":
			r.state = "failed"
			msg := ""
			if c.Failure != nil {
				msg = firstLine(c.Failure.Message, c.Failure.Text)
			} else if c.Error != nil {
				msg = firstLine(c.Error.Message, c.Error.Text)
			}
			r.detail = msg
		case c.Skipped != nil || c.Status == "skipped" || c.Status == "pending":
			r.state = "skipped"
			if reason != "" {
				r.detail = reason
			} else if c.Skipped != nil {
				r.detail = c.Skipped.Message
			}
		default:
			r.state = "passed"
		}
		if ok {
			r.secs = c.Time
			if f, err := strconv.ParseFloat(c.Time, 64); err == nil {
				r.secs = strconv.FormatFloat(f, 'f', 0, 64)
			}
		}
		count[r.state]++
		res = append(res, r)
	}
	order := map[string]int{"failed": 0, "not run": 1, "skipped": 2, "passed": 3}
	sort.SliceStable(res, func(i, j int) bool { return order[res[i].state] < order[res[j].state] })

	if headerPath != "" {
		h, err := os.ReadFile(headerPath)
		if err != nil {
			return err
		}
		w.Write(h)
	}
	counts := fmt.Sprintf("%d tests: %d passed, %d failed, %d skipped", len(names), count["passed"], count["failed"], count["skipped"])
	if count["not run"] > 0 {
		counts += fmt.Sprintf(", %d not run", count["not run"])
	}
	fmt.Fprintf(os.Stderr, "netpolreport: %s\n", counts)
	fmt.Fprintf(w, "**%s.**\n\n", counts)
	fmt.Fprintln(w, "| result | test | seconds | detail |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, r := range res {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", r.state, cell(r.name), r.secs, cell(r.detail))
	}
	return nil
}

func firstLine(parts ...string) string {
	for _, p := range parts {
		p = strings.TrimSpace(p)
		if p == "" {
			continue
		}
		l, _, _ := strings.Cut(p, "\n")
		if len(l) > 200 {
			l = l[:200] + "…"
		}
		return l
	}
	return ""
}

func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l != "" && !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	return out, sc.Err()
}
