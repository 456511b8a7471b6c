package dpbench

import (
	"fmt"
	"image/color"
	"math"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// ratioSeries is one configuration's ratio-to-none against N, with the
// min–max of the repetitions as error bars.
type ratioSeries struct {
	xs, ys, lo, hi []float64
}

func (s ratioSeries) Len() int                    { return len(s.xs) }
func (s ratioSeries) XY(i int) (float64, float64) { return s.xs[i], s.ys[i] }
func (s ratioSeries) YError(i int) (float64, float64) {
	return s.ys[i] - s.lo[i], s.hi[i] - s.ys[i]
}

// nTicks labels the measured rule counts on the log axis.
type nTicks []int

func (t nTicks) Ticks(lo, hi float64) []plot.Tick {
	var out []plot.Tick
	for _, n := range t {
		out = append(out, plot.Tick{Value: float64(n), Label: strconv.Itoa(n)})
	}
	return out
}

// Chart writes a PNG of each configuration's ratio to "none" against N
// (log scale) for the metric "rr" (TCP_RR) or "crr" (TCP_CRR).
func (r *Result) Chart(path, metric string) error {
	pick := func(p Point) Metric { return p.RR }
	title := "TCP_RR rate relative to no enforcement"
	if metric == "crr" {
		pick = func(p Point) Metric { return p.CRR }
		title = "TCP_CRR rate relative to no enforcement"
	}
	pl := plot.New()
	pl.Title.Text = title
	pl.X.Label.Text = "allowed peers N (rules, set elements or identities)"
	pl.Y.Label.Text = "rate / rate without enforcement (bars: min–max of repetitions)"
	pl.X.Scale = plot.LogScale{}
	pl.X.Tick.Marker = nTicks(r.Ns())
	pl.Legend.Top = false
	pl.Legend.Left = true
	pl.Add(plotter.NewGrid())
	for i, cfg := range r.Options.Configs {
		var s ratioSeries
		for _, n := range r.Ns() {
			p, ok := r.point(n, cfg)
			if !ok || len(pick(p).Ratios) == 0 {
				continue
			}
			m := pick(p)
			// Nudge each configuration sideways (log scale) so the
			// error bars do not hide each other.
			s.xs = append(s.xs, float64(n)*math.Pow(10, 0.025*float64(i-len(r.Options.Configs)/2)))
			s.ys = append(s.ys, m.RatioMedian)
			s.lo = append(s.lo, m.RatioMin)
			s.hi = append(s.hi, m.RatioMax)
		}
		if s.Len() == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(s)
		if err != nil {
			return fmt.Errorf("chart %s: %w", cfg, err)
		}
		c := plotutil.Color(i)
		if cfg == CfgZT {
			line.Width = vg.Points(2.5)
		}
		line.Color, points.Color = c, c
		points.Shape = plotutil.Shape(i)
		bars, err := plotter.NewYErrorBars(s)
		if err != nil {
			return fmt.Errorf("chart %s: %w", cfg, err)
		}
		bars.Color = c
		bars.LineStyle.Color = c
		pl.Add(line, points, bars)
		pl.Legend.Add(cfg, line, points)
	}
	if ns := r.Ns(); len(ns) > 0 {
		pl.X.Min, pl.X.Max = float64(ns[0])/2, float64(ns[len(ns)-1])*2
	}
	pl.Y.Min = 0
	if pl.Y.Max < 1.1 {
		pl.Y.Max = 1.1
	}
	one := plotter.NewFunction(func(float64) float64 { return 1 })
	one.Color = color.Gray{Y: 120}
	one.Dashes = []vg.Length{vg.Points(4), vg.Points(4)}
	pl.Add(one)
	return pl.Save(8*vg.Inch, 5*vg.Inch, path)
}
